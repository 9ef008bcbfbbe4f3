"""The systemd units and their environment file in ``deploy/`` agree with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobcast.config import Settings
from jobcast.settings_doc import env_name

DEPLOY = Path(__file__).parent.parent / "deploy" / "systemd"
UNITS = ("jobcast@.service", "jobcast-worker@.service")


def directives(unit: str) -> dict[str, str]:
    lines = (DEPLOY / unit).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z]\w*=", line))


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd", pytrace=False)
    jobcast = Path(sys.executable).with_name("jobcast")
    for unit, instance in zip(UNITS, ("8001", "1"), strict=True):
        text = (DEPLOY / unit).read_text().replace("/opt/jobcast/venv/bin/jobcast", str(jobcast))
        (tmp_path / unit.replace("@", f"@{instance}")).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Unknown directives are only warnings, so any output at all is a failure.
    assert result.returncode == 0 and not result.stdout + result.stderr, result.stderr


def test_the_units_run_existing_commands_and_stop_after_the_grace() -> None:
    serve = directives("jobcast@.service")["ExecStart"].split()
    assert serve[1:3] == ["serve", "--host"] and serve[4] == "--port"
    assert directives("jobcast-worker@.service")["ExecStart"].split()[1] == "worker"
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "jobcast.env").read_text().splitlines()
        if re.match(r"^[A-Z]\w*=", line)
    )
    grace = float(env["JOBCAST_SHUTDOWN_GRACE_SECONDS"])
    for unit in UNITS:
        assert float(directives(unit)["TimeoutStopSec"]) > grace + 10  # the reserve, and more


def test_the_environment_file_names_only_real_settings() -> None:
    named = re.findall(r"^#?(JOBCAST_\w+)=", (DEPLOY / "jobcast.env").read_text(), re.M)
    known = {env_name(name) for name in Settings.model_fields}
    assert named and not set(named) - known
