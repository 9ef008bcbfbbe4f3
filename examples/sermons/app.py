"""The sermon transcription service: ``uvicorn examples.sermons.app:app``.

Everything real-time is jobcast's: the hub and its history, the SSE stream, the job runner,
tokens, cookie sessions with CSRF, CORS. This package adds the front end's URLs and formats
(``events.py``, ``videos.py``, ``dtos.py``) and the pipeline: a Celery task per video
(``tasks.py``, ``worker.py``), tracked as a jobcast job.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from examples.sermons import events, videos
from examples.sermons.config import SermonsConfig
from jobcast import Jobcast


def create_app(config: SermonsConfig | None = None, **settings: Any) -> FastAPI:
    """The service; ``settings`` override jobcast settings (tests pass ``data_dir``, ...)."""
    config = config or SermonsConfig.from_env()
    jc = Jobcast(config.settings(**settings))
    app = FastAPI(title="CultoTranscript API v2", version="2.0.0", lifespan=jc.lifespan)
    app.include_router(events.events_router(jc))
    app.include_router(videos.videos_router(jc, config))
    jc.install(
        app, app_wide=True
    )  # sessions, CSRF, CORS, JSON errors, /api/events (the workers' publish path)
    return app


app = create_app()
