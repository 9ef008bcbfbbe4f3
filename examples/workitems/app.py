"""The work-item inbox: ``uvicorn examples.workitems.app:app``, dashboard at ``/``.

jobcast carries the work items to every connected dashboard (on Redis, across instances) and
keeps them replayable, so a dashboard whose connection was cut (hosts that end long requests:
``JOBCAST_MAX_STREAM_SECONDS``) resumes without missing one. This package adds the intake and
extraction (``inbox.py``, ``extract.py``), the store (``store.py``) and the page.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from examples.workitems import dashboard, inbox
from examples.workitems.store import WorkItemStore
from jobcast import Jobcast, Settings

DEFAULT_DATA_DIR = Path(".jobcast") / "workitems"


def settings_from_env(**overrides: Any) -> Settings:
    """jobcast settings with this app's defaults; ``JOBCAST_*`` variables still win."""
    env = os.environ
    values: dict[str, Any] = {}
    if "JOBCAST_DATA_DIR" not in env:
        values["data_dir"] = DEFAULT_DATA_DIR
    if "JOBCAST_HEARTBEAT_INTERVAL" not in env:
        values["heartbeat_interval"] = 30.0
    # The dashboard's stream is open to anyone, as the front end expects; set
    # WORKITEMS_PUBLIC=false to require a token (or a stream ticket) for it and the list.
    if env.get("WORKITEMS_PUBLIC", "true").lower() not in ("0", "false", "no"):
        values["public_topics"] = [inbox.TOPIC]
    values.update(overrides)
    return Settings(**values)


def create_app(settings: Settings | None = None) -> FastAPI:
    jc = Jobcast(settings or settings_from_env())
    store = WorkItemStore(jc.settings.data_dir / "workitems.db")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with jc.lifespan(app):
            await store.open()
            try:
                yield
            finally:
                await store.close()

    app = FastAPI(title="Work-item inbox", lifespan=lifespan)
    app.include_router(inbox.inbox_router(jc, store))
    app.include_router(dashboard.dashboard_router())  # the page at `/`: not jobcast's dashboard
    # /static/jobcast.js (used by the page), tokens, /api/events, ...; the page is the app's
    jc.install(app, app_wide=True, dashboard=False)
    return app


app = create_app()
