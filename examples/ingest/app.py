"""The file ingest API and its React front end: ``uvicorn examples.ingest.app:app``.

jobcast runs ingestion as jobs, streams uploads to disk with their SHA-256, verifies tokens and
serves the WebSocket status feed (a job socket rendered as this front end's status objects).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from examples.ingest import api, frontend, pipeline
from jobcast import Jobcast, Settings

DEFAULT_DATA_DIR = Path(".jobcast") / "ingest"


def create_app(step_delay: float | None = None, **settings: Any) -> FastAPI:
    """The service; ``settings`` override jobcast settings (tests pass ``data_dir``, ...)."""
    if step_delay is None:
        step_delay = float(os.environ.get("INGEST_STEP_DELAY", "0.5"))
    if "data_dir" not in settings and "JOBCAST_DATA_DIR" not in os.environ:
        settings["data_dir"] = DEFAULT_DATA_DIR
    jc = Jobcast(Settings(**settings))
    jc.registry.update(pipeline.registry(step_delay))
    app = FastAPI(title="File ingest API", lifespan=jc.lifespan)
    app.include_router(api.ingest_router(jc))
    app.include_router(frontend.frontend_router())  # the page at `/`: not jobcast's dashboard
    jc.install(app, app_wide=True, upload_paths=["/api/ingest"], dashboard=False)
    return app


app = create_app()
