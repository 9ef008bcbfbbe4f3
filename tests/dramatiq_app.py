"""The Dramatiq actors of the Dramatiq integration tests (``dramatiq tests.dramatiq_app``).

Settings come from the environment the test module sets (``JOBCAST_TEST_DRAMATIQ_*``), so the
test process (the sender) and its worker subprocesses share one broker namespace and store.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from jobcast.integrations.dramatiq import JobcastMiddleware, progress, stream
from tests.output_support import line

REDIS = os.environ.get("JOBCAST_TEST_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("JOBCAST_TEST_DRAMATIQ_PREFIX", "jobcast-test-dramatiq")

broker = RedisBroker(url=REDIS, namespace=PREFIX)
broker.add_middleware(
    JobcastMiddleware(
        jobcast=os.environ.get("JOBCAST_TEST_DRAMATIQ_JOBCAST", f"{REDIS}?prefix={PREFIX}"),
        store=os.environ.get("JOBCAST_TEST_DRAMATIQ_STORE", "sqlite+aiosqlite:///jobs.db"),
        heartbeat=float(os.environ.get("JOBCAST_TEST_DRAMATIQ_HEARTBEAT", "10")),
    )
)
dramatiq.set_broker(broker)


def _key(name: str) -> str:
    return f"{PREFIX}:{name}"


@dramatiq.actor(max_retries=0)
def count(steps: int) -> dict[str, int]:
    for step in range(steps):
        progress(100 * (step + 1) / steps, stage="counting", message=f"{step + 1}/{steps}")
    return {"steps": steps}


@dramatiq.actor(max_retries=2, min_backoff=10, max_backoff=10)
def flaky(name: str, failures: int) -> str:
    progress(10, stage="trying")
    if redis.Redis.from_url(REDIS).incr(_key(name)) <= failures:
        raise OSError("this attempt failed")
    return "ok"


@dramatiq.actor(max_retries=0)
def broken() -> None:
    password = "hunter2"  # a local value that must never reach the job
    raise ValueError(f"bad input (length {len(password)})")


@dramatiq.actor(max_retries=0)
def opaque(value: int) -> set[int]:
    return {value}


@dramatiq.actor(max_retries=0)
def gate(name: str) -> str:
    client = redis.Redis.from_url(REDIS)
    progress(5, stage="started")
    client.rpush(_key(f"{name}:running"), os.getpid())
    if client.blpop([_key(f"{name}:go")], timeout=30) is None:
        raise TimeoutError("the test never released the message")
    return "released"


def release(name: str) -> None:
    redis.Redis.from_url(REDIS).rpush(_key(f"{name}:go"), 1)


def wait_running(name: str, timeout: float = 20) -> None:
    if redis.Redis.from_url(REDIS).blpop([_key(f"{name}:running")], timeout=timeout) is None:
        raise TimeoutError(f"gate({name!r}) did not start within {timeout} s")


@dramatiq.actor(max_retries=0)
def write_lines(n: int) -> int:
    out = stream()
    for i in range(n):
        out.write(line(i))
    return n


@dramatiq.actor(max_retries=0)
def write_then_fail(n: int) -> None:
    out, events = stream(), stream("events", content_type="application/json")
    for i in range(n):
        out.write(line(i))
        events.write({"i": i})
    raise RuntimeError("failed after writing")


@dramatiq.actor(max_retries=0)
def write_too_much(size: int) -> None:
    out = stream()
    out.write("kept\n")
    out.write("x" * size)  # past JOBCAST_MAX_STREAM_BYTES: PayloadTooLarge
