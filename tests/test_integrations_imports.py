"""A worker process with a queue integration loads no part of the server and no web framework:
importing each integration, and tracking an app with it (which loads the store's modules),
checked in a fresh interpreter."""

from __future__ import annotations

import pytest

from tests.test_light_imports import loaded_by, under

NEVER = ("jobcast.server", "fastapi", "starlette", "uvicorn")

TRACKED_CELERY_APP = """
from celery import Celery
from jobcast.integrations.celery import track
app = Celery("light", broker="memory://")
track(app, jobcast="redis://127.0.0.1:6379/15", store="sqlite+aiosqlite:///light.db")
"""


@pytest.mark.parametrize(
    "code",
    ["import jobcast.integrations.celery", TRACKED_CELERY_APP],
    ids=["import", "track"],
)
def test_the_celery_integration_loads_no_server(code: str) -> None:
    loaded = loaded_by(code)
    assert "jobcast.integrations.celery" in loaded
    assert under(loaded, NEVER) == []


@pytest.mark.parametrize("module", ["jobcast.integrations.rq", "jobcast.integrations.dramatiq"])
def test_the_rq_and_dramatiq_integrations_load_no_server(module: str) -> None:
    loaded = loaded_by(f"import {module}")
    assert module in loaded
    assert under(loaded, NEVER) == []
