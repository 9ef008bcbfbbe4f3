"""The Celery app of the HTTP reporting tests (``celery -A tests.celery_http_app worker``): its
workers reach jobcast only through its API, with a service token (no broker, no store).

The test sets ``JOBCAST_TEST_CELERY_HTTP_URL`` and ``JOBCAST_TEST_CELERY_HTTP_TOKEN`` (and the
key prefix) before it imports this module and starts workers.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, Task

from jobcast.integrations.celery import progress, stream, track
from tests.output_support import line

REDIS = os.environ.get("JOBCAST_TEST_CELERY_REDIS", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("JOBCAST_TEST_CELERY_PREFIX", "jobcast-test-celery-http")

app = Celery(
    "jobcast_http_tests",
    broker=os.environ.get("JOBCAST_TEST_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=REDIS,
)
app.conf.update(
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
track(
    app,
    jobcast=os.environ.get("JOBCAST_TEST_CELERY_HTTP_URL", "http://127.0.0.1:8000"),
    token=os.environ.get("JOBCAST_TEST_CELERY_HTTP_TOKEN", "unset"),
    heartbeat=float(os.environ.get("JOBCAST_TEST_CELERY_HEARTBEAT", "10")),
)


@app.task(bind=True)
def count(self: Task[Any, Any], steps: int) -> dict[str, int]:
    for step in range(steps):
        progress(self, 100 * (step + 1) / steps, stage="counting", message=f"{step + 1}/{steps}")
    return {"steps": steps}


@app.task(bind=True, autoretry_for=(OSError,), max_retries=3, default_retry_delay=0)
def flaky(self: Task[Any, Any], name: str, failures: int) -> str:
    progress(self, 10, stage="trying")
    if redis.Redis.from_url(REDIS).incr(f"{PREFIX}:{name}") <= failures:
        raise OSError(f"attempt {self.request.retries + 1} failed")
    return "ok"


@app.task
def broken() -> None:
    raise ValueError("bad input")


@app.task(bind=True)
def write_lines(self: Task[Any, Any], n: int) -> int:
    out = stream(self)
    for i in range(n):
        out.write(line(i))
    return n


@app.task(bind=True)
def write_then_fail(self: Task[Any, Any], n: int) -> None:
    out, events = stream(self), stream(self, "events", content_type="application/json")
    for i in range(n):
        out.write(line(i))
        events.write({"i": i})
    raise RuntimeError("failed after writing")


@app.task(bind=True)
def write_too_much(self: Task[Any, Any], size: int) -> None:
    out = stream(self)
    out.write("kept\n")
    out.write("x" * size)  # past JOBCAST_MAX_STREAM_BYTES: PayloadTooLarge
