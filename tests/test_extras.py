"""A backend whose optional dependency is missing is one line naming the extra, at start.

Each case runs jobcast in a subprocess whose import of the library fails: a directory put
first on ``PYTHONPATH`` holds a package of that name that raises ``ImportError``, exactly as
an environment without the extra behaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobcast.errors import MissingExtra
from jobcast.extras import check_backends, require

SQLITE_STORE = "sqlite+aiosqlite:///jobs.db"


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing ``modules`` fails."""
    shims = tmp_path / "shims"
    for module in modules:
        (shims / module).mkdir(parents=True)
        (shims / module / "__init__.py").write_text(
            f"raise ImportError({f'No module named {module!r}'!r}, name={module!r})\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shims), env.get("PYTHONPATH")]))
    env["JOBCAST_DATA_DIR"] = str(tmp_path / "data")
    return env


def jobcast(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobcast", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("missing", "settings", "extra"),
    [
        ("redis", {"JOBCAST_BROKER_URL": "redis://127.0.0.1:1/0"}, "redis"),
        ("asyncpg", {"JOBCAST_STORE_URL": "postgresql://app@127.0.0.1:1/jobs"}, "postgres"),
        ("asyncpg", {"JOBCAST_BROKER_URL": "postgresql://app@127.0.0.1:1/jobs"}, "postgres"),
        (
            "saq",
            {"JOBCAST_QUEUE_URL": "redis://127.0.0.1:1/0", "JOBCAST_BROKER_URL": "memory://"},
            "queue",
        ),
        (
            "psycopg",
            {
                "JOBCAST_QUEUE_URL": "postgresql://app@127.0.0.1:1/jobs",
                "JOBCAST_BROKER_URL": "memory://",
            },
            "postgres",
        ),
    ],
)
def test_serve_without_an_extra_says_which_to_install(
    tmp_path: Path, missing: str, settings: dict[str, str], extra: str
) -> None:
    done = jobcast(tmp_path, {**without(tmp_path, missing), **settings}, "serve", "--port", "0")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert f"pip install 'jobcast[{extra}]'" in lines[0]
    assert f"{missing!r} package" in lines[0]


def test_worker_without_the_queue_extra_says_so(tmp_path: Path) -> None:
    env = {**without(tmp_path, "saq"), "JOBCAST_QUEUE_URL": "redis://127.0.0.1:1/0"}
    done = jobcast(tmp_path, env, "worker")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: jobcast worker needs the 'saq' package, which is not installed: "
        "pip install 'jobcast[queue]'"
    )


def test_an_embedding_app_gets_the_error_when_it_creates_jobcast(tmp_path: Path) -> None:
    env = {**without(tmp_path, "redis"), "JOBCAST_BROKER_URL": "redis://127.0.0.1:1/0"}
    code = (
        "from jobcast import Jobcast, MissingExtra\n"
        "try:\n"
        "    Jobcast()\n"
        "except MissingExtra as exc:\n"
        "    print(exc.extra)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout.strip()) == (0, "redis"), done.stderr


def test_tracing_without_the_otel_extra_says_so(tmp_path: Path) -> None:
    # A worker: newer FastAPI releases import OpenTelemetry's API themselves.
    env = {
        **without(tmp_path, "opentelemetry"),
        "JOBCAST_OTEL": "true",
        "JOBCAST_QUEUE_URL": "redis://127.0.0.1:1/0",
    }
    done = jobcast(tmp_path, env, "worker")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: tracing (JOBCAST_OTEL) needs the 'opentelemetry.trace' package, which is not "
        "installed: pip install 'jobcast[otel]'"
    )


def test_installed_backends_pass_and_unknown_modules_fail() -> None:
    check_backends("redis://127.0.0.1:6379/0", "postgresql://app@db/jobs", "redis://q")
    check_backends("postgresql://app@db/jobs", "postgresql://app@db/jobs", "postgresql://app@db")
    check_backends("memory://", SQLITE_STORE, None)
    with pytest.raises(MissingExtra) as caught:
        require("jobcast_no_such_module", "fancy", "the fancy backend")
    assert caught.value.extra == "fancy"
    assert str(caught.value).endswith("pip install 'jobcast[fancy]'")
