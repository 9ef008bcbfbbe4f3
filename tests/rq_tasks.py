"""The functions of the RQ integration tests' jobs (run by `rq worker` subprocesses).

Functions that must wait for the test wait on a Redis list, with a timeout, never on a sleep.
"""

from __future__ import annotations

import os

import redis

from jobcast.integrations.rq import metadata, progress, stream
from tests.output_support import line

REDIS = os.environ.get("JOBCAST_TEST_RQ_REDIS", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("JOBCAST_TEST_RQ_PREFIX", "jobcast-test-rq")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS)


def _key(name: str) -> str:
    return f"{PREFIX}:{name}"


class Opaque:
    """Not JSON (RQ pickles arguments): recorded as its repr."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Opaque({self.value})"


def count(steps: int) -> dict[str, int]:
    meta = metadata()
    for step in range(steps):
        progress(100 * (step + 1) / steps, stage="counting", message=f"{step + 1}/{steps}")
        if meta is not None:
            meta.increment("counted")
    return {"steps": steps}


def flaky(name: str, failures: int) -> str:
    progress(10, stage="trying")
    if _redis().incr(_key(name)) <= failures:
        raise OSError("this attempt failed")
    return "ok"


def broken() -> None:
    password = "hunter2"  # a local value that must never reach the job
    raise ValueError(f"bad input (length {len(password)})")


def opaque(value: Opaque) -> set[int]:
    return {value.value}


def gate(name: str) -> str:
    """Report, tell the test it runs, then wait for its go."""
    client = _redis()
    progress(5, stage="started")
    client.rpush(_key(f"{name}:running"), os.getpid())
    if client.blpop([_key(f"{name}:go")], timeout=30) is None:
        raise TimeoutError("the test never released the job")
    return "released"


def gate_writing(name: str) -> str:
    stream().write("started\n")
    return gate(name)


def release(name: str) -> None:
    _redis().rpush(_key(f"{name}:go"), 1)


def running_pid(name: str, timeout: float = 20) -> int:
    found = _redis().blpop([_key(f"{name}:running")], timeout=timeout)
    if found is None:
        raise TimeoutError(f"gate({name!r}) did not start within {timeout} s")
    return int(found[1])


def write_lines(n: int) -> int:
    out = stream()
    for i in range(n):
        out.write(line(i))
    return n


def write_then_fail(n: int) -> None:
    out, events = stream(), stream("events", content_type="application/json")
    for i in range(n):
        out.write(line(i))
        events.write({"i": i})
    raise RuntimeError("failed after writing")


def write_too_much(size: int) -> None:
    out = stream()
    out.write("kept\n")
    out.write("x" * size)  # past JOBCAST_MAX_STREAM_BYTES: PayloadTooLarge
