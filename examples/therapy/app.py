"""Therapy session processing: ``uvicorn examples.therapy.app:app``.

jobcast runs the sessions' processing as jobs, streams their status (snapshot, replay, live,
end after the last event) and verifies tokens; this package adds the access rule
(``access.py``), the status shape (``status.py``) and the routes (``sessions.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from examples.therapy import pipeline, sessions
from examples.therapy.access import TherapyPolicy
from examples.therapy.config import TherapyConfig
from jobcast import Jobcast


def create_app(config: TherapyConfig | None = None, **settings: Any) -> FastAPI:
    """The service; ``settings`` override jobcast settings (tests pass ``data_dir``, ...)."""
    config = config or TherapyConfig.from_env()
    values = config.settings(**settings)
    policy = TherapyPolicy(values.public_topics, config.assignments)
    jc = Jobcast(values, policy=policy)
    jc.registry.update(pipeline.registry(config))
    app = FastAPI(title="Therapy sessions", lifespan=jc.lifespan)
    app.include_router(sessions.sessions_router(jc, policy))
    jc.install(app, app_wide=True, upload_paths=["/api/sessions"])
    return app


app = create_app()
