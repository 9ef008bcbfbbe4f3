"""What users expect of a command: --version, shell completion, NO_COLOR."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import jobcast
from jobcast.cli import app
from jobcast.cli_context import console
from jobcast.cli_render import jobs_table
from jobcast.client import Job
from tests.test_cli_client import job_data

ESC = "\x1b["
PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"jobcast {jobcast.__version__}\n"
    # The version is declared once: the package's metadata reads it from _version.py.
    project = tomllib.loads(PYPROJECT.read_text())
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/jobcast/_version.py"
    assert importlib.metadata.version("jobcast") == jobcast.__version__


def test_shell_completion_is_available() -> None:
    runner = CliRunner()
    assert "--install-completion" in runner.invoke(app, ["--help"]).output
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="jobcast")
    assert script.exit_code == 0
    assert "_JOBCAST_COMPLETE" in script.output


@pytest.mark.parametrize("no_color", ["1", ""])
def test_error_lines_are_plain_under_no_color(no_color: str) -> None:
    # Port 1 refuses at once: the command ends with its one-line error.
    args = ["watch", "0123", "--url", "http://127.0.0.1:1", "--token", "t"]
    result = CliRunner().invoke(app, args, color=True, env={"NO_COLOR": no_color})
    assert result.exit_code == 4
    assert "error: cannot reach the jobcast server" in result.output
    assert (ESC in result.output) is (not no_color)  # NO_COLOR="" means colour, per the spec


@pytest.mark.parametrize("no_color", ["1", ""])
def test_rich_output_is_plain_under_no_color(
    monkeypatch: pytest.MonkeyPatch, no_color: str
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # as on a terminal
    monkeypatch.setenv("NO_COLOR", no_color)
    out = console()
    with out.capture() as captured:
        out.print(jobs_table([Job.from_dict(job_data(state="failed"))]))
    text = captured.get()
    assert "failed" in text
    assert (ESC in text) is (not no_color)


@pytest.mark.parametrize("args", [["--help"], ["--no-such-option"], ["watch"]])
def test_help_and_usage_errors_are_plain_under_no_color(args: list[str]) -> None:
    env = {**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "1"}  # as on a terminal
    done = subprocess.run(
        [sys.executable, "-m", "jobcast", *args], env=env, capture_output=True, text=True
    )
    assert done.stdout + done.stderr
    assert ESC not in done.stdout + done.stderr
