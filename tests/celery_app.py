"""The Celery app of the Celery integration tests (``celery -A tests.celery_app worker``).

Its settings come from the environment the test module sets (``JOBCAST_TEST_CELERY_*``), so
the test process (the sender) and its worker subprocesses share the broker, store and key
prefix of one test run. Tasks that must wait for the test wait on a Redis list, with a
timeout, never on a sleep.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, Task

from jobcast.integrations.celery import progress, stream, track
from tests.output_support import line

REDIS = os.environ.get("JOBCAST_TEST_CELERY_REDIS", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("JOBCAST_TEST_CELERY_PREFIX", "jobcast-test-celery")

app = Celery(
    "jobcast_tests",
    broker=os.environ.get("JOBCAST_TEST_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=REDIS,
)
app.conf.update(
    accept_content=["json", "pickle"],
    result_accept_content=["json", "pickle"],
    result_serializer="pickle",  # opaque() returns a set
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
track(
    app,
    jobcast=os.environ.get("JOBCAST_TEST_CELERY_JOBCAST", f"{REDIS}?prefix={PREFIX}"),
    store=os.environ.get("JOBCAST_TEST_CELERY_STORE", "sqlite+aiosqlite:///celery-jobs.db"),
    heartbeat=float(os.environ.get("JOBCAST_TEST_CELERY_HEARTBEAT", "10")),
    wait=5.0,
)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS)


def _key(name: str) -> str:
    return f"{PREFIX}:{name}"


class Opaque:
    """Not JSON: sent with pickle, recorded as its repr."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Opaque({self.value})"


@app.task(bind=True)
def count(self: Task[Any, Any], steps: int) -> dict[str, int]:
    for step in range(steps):
        progress(self, 100 * (step + 1) / steps, stage="counting", message=f"{step + 1}/{steps}")
    return {"steps": steps}


@app.task(bind=True, autoretry_for=(OSError,), max_retries=3, default_retry_delay=0)
def flaky(self: Task[Any, Any], name: str, failures: int) -> str:
    progress(self, 10, stage="trying")
    if _redis().incr(_key(name)) <= failures:
        raise OSError(f"attempt {self.request.retries + 1} failed")
    return "ok"


@app.task
def broken() -> None:
    password = "hunter2"  # a local value that must never reach the job
    raise ValueError(f"bad input (length {len(password)})")


@app.task(serializer="pickle")
def opaque(value: Opaque) -> set[int]:
    return {value.value}


@app.task(bind=True)
def gate(self: Task[Any, Any], name: str) -> str:
    return _gate(self, name)


@app.task(bind=True, acks_late=True)
def gate_late(self: Task[Any, Any], name: str) -> str:
    return _gate(self, name)


@app.task(bind=True)
def gate_writing(self: Task[Any, Any], name: str) -> str:
    """``gate`` that writes its output stream: ``started``, ``waiting`` at every wait,
    ``released``."""
    out = stream(self)
    out.write("started\n")
    return _gate(self, name, out.write)


def _gate(self: Task[Any, Any], name: str, write: Callable[[str], None] = lambda text: None) -> str:
    """Report, tell the test it runs, then wait for its go (short waits, so a revoke in a
    thread pool lands at the next ``progress``)."""
    client = _redis()
    progress(self, 5, stage="started")
    client.rpush(_key(f"{name}:running"), os.getpid())
    for _ in range(300):
        if client.blpop([_key(f"{name}:go")], timeout=0.1) is not None:
            progress(self, 90, stage="released")
            write("released\n")
            return "released"
        progress(self, 10, stage="waiting")
        write("waiting\n")
    raise TimeoutError("the test never released the task")


def release(name: str) -> None:
    _redis().rpush(_key(f"{name}:go"), 1)


def running_pid(name: str, timeout: float = 20) -> int:
    """The pid of the process running ``gate(name)``, once it runs (blocking, bounded)."""
    found = _redis().blpop([_key(f"{name}:running")], timeout=timeout)
    if found is None:
        raise TimeoutError(f"gate({name!r}) did not start within {timeout} s")
    return int(found[1])


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


@app.task(bind=True, autoretry_for=(OSError,), max_retries=3, default_retry_delay=0)
def write_and_retry(self: Task[Any, Any], name: str, failures: int) -> str:
    stream(self).write(f"attempt {self.request.retries + 1}\n")
    if _redis().incr(_key(name)) <= failures:
        raise OSError(f"attempt {self.request.retries + 1} failed")
    return "ok"


@app.task(bind=True)
def write_too_much(self: Task[Any, Any], size: int) -> None:
    out = stream(self)
    out.write("kept\n")
    out.write("x" * size)  # past JOBCAST_MAX_STREAM_BYTES: PayloadTooLarge
