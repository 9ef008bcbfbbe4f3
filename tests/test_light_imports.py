"""What each entry point loads: the client and the publisher never load the server, the handler
registry or the web framework; settings never load the runner; a worker never loads the server.

Each case runs in a fresh interpreter, since this one has loaded everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: The web framework, the ASGI server, the SQL toolkit and the queue: server-side dependencies.
FRAMEWORK = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "saq")
#: What running handlers takes: their registry (and pydantic with it), their context, the runner.
HANDLERS = (
    "jobcast.jobs.registry",
    "jobcast.jobs.context",
    "jobcast.jobs.runner",
    "jobcast.jobs.lifecycle",
    "jobcast.jobs.live",
)
SERVER = ("jobcast.server",)


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def under(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    """The loaded modules that are ``roots`` or inside them."""
    return sorted(m for m in modules if any(m == r or m.startswith(f"{r}.") for r in roots))


def test_the_client_loads_no_server_no_handlers_and_no_pydantic() -> None:
    loaded = loaded_by("import jobcast.client")
    assert "jobcast.client" in loaded
    assert "jobcast.jobs.model" in loaded  # the client's Job states come from the one model
    assert under(loaded, (*SERVER, *HANDLERS, *FRAMEWORK, "pydantic", "jobcast.stores")) == []


def test_importing_the_publisher_loads_almost_nothing() -> None:
    loaded = loaded_by("import jobcast.publisher")
    assert "jobcast.publisher" in loaded
    # It loads its broker, settings and redis when one is created, not on import.
    assert under(loaded, ("jobcast",)) == [
        "jobcast",
        "jobcast._version",
        "jobcast.errors",
        "jobcast.publisher",
    ]
    assert under(loaded, (*FRAMEWORK, "pydantic", "redis")) == []


def test_a_publisher_loads_redis_and_settings_but_no_server_and_no_handlers() -> None:
    # Creating one connects to nothing: Redis is first reached by a publish.
    loaded = loaded_by(
        "import asyncio\n"
        "from jobcast.publisher import AsyncPublisher\n"
        "async def main() -> None:\n"
        "    await AsyncPublisher('redis://127.0.0.1:1/0').close()\n"
        "asyncio.run(main())"
    )
    # What it needs: the Redis broker and redis-py, and the settings (pydantic-settings) for
    # the retention of the history it writes.
    assert {"jobcast.brokers.redis", "redis", "jobcast.config", "pydantic"} <= loaded
    assert under(loaded, (*SERVER, *HANDLERS, *FRAMEWORK, "jobcast.stores")) == []


def test_settings_do_not_load_the_runner() -> None:
    loaded = loaded_by("import jobcast.config")
    assert under(loaded, (*SERVER, *HANDLERS, *FRAMEWORK, "jobcast.stores")) == []


@pytest.mark.parametrize("module", ["jobcast.jobs.worker", "jobcast.jobs.worker_queue"])
def test_a_worker_loads_no_server(module: str) -> None:
    loaded = loaded_by(f"import {module}")
    assert module in loaded
    assert under(loaded, (*SERVER, "fastapi", "starlette", "uvicorn")) == []


def test_a_server_without_tracing_never_loads_it() -> None:
    """tracing.O1: off (the default), a running app and its job engine leave it unloaded."""
    code = (
        "import asyncio, tempfile\n"
        "from jobcast.server.app import create_app\n"
        "from jobcast.config import Settings\n"
        "app = create_app(Settings(_env_file=None, data_dir=tempfile.mkdtemp()))\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        jc = app.state.jobcast\n"
        "        await jc.hub.publish('a', 'b', {})\n"
        "        await jc.hub.subscribe(())\n"
        "asyncio.run(main())\n"
    )
    loaded = loaded_by(code)
    assert "jobcast.jobs.lifecycle" in loaded
    assert under(loaded, ("jobcast.tracing",)) == []
