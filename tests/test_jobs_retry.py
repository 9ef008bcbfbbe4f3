"""Retries (``jobs/retry.py``, lifecycle.R4): policies, backoff, and the events a retry makes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.jobs import Fatal, JobContext, Registry, Retry, RetryPolicy
from jobcast.jobs.model import JobState
from tests.jobs_support import submit, watch
from tests.support import LiveServer, eventually
from tests.test_runner import embedded, events_until_end


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(max_attempts=10, initial=1.0, factor=2.0, max=5.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0), (10_000, 5.0)]:
        delays = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not a fixed step


@pytest.mark.parametrize(
    "arguments",
    [{"max_attempts": 0}, {"max_attempts": 26}, {"initial": 5.0, "max": 1.0}, {"factor": 0.5}],
)
def test_a_policy_out_of_bounds_is_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|needs"):
        RetryPolicy(**arguments)


def test_which_errors_retry() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(ConnectionError,))
    assert policy.retries(ConnectionError())
    assert not policy.retries(ValueError())
    assert policy.retries(Retry())  # the handler asked
    assert not policy.retries(Fatal("no"))


def registry_of(failures: dict[str, int]) -> Registry:
    registry = Registry()
    fast = RetryPolicy(max_attempts=3, initial=0.01, max=0.02, retry_on=(ConnectionError,))

    @registry.handler("flaky", retry=fast)
    async def flaky(ctx: JobContext, params: dict[str, Any]) -> int:
        ctx.progress(40 + ctx.attempt, stage=f"attempt {ctx.attempt}")
        if ctx.attempt <= params["fail"]:
            raise ConnectionError(f"attempt {ctx.attempt} lost its connection")
        return ctx.attempt

    @registry.handler("fatal", retry=fast)
    async def fatal(ctx: JobContext, params: dict[str, Any]) -> None:
        raise Fatal("the input can never work")

    @registry.handler("wrong_type", retry=fast)
    async def wrong_type(ctx: JobContext, params: dict[str, Any]) -> None:
        raise ValueError("not a connection problem")

    @registry.handler("asks")  # no policy: Retry still works when the submission allows it
    async def asks(ctx: JobContext, params: dict[str, Any]) -> str:
        if ctx.attempt == 1:
            raise Retry("not yet", after=0.05)
        return "ok"

    @registry.handler("slow", timeout=0.05, retry=fast)
    async def slow(ctx: JobContext, params: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    @registry.handler("waits", retry=RetryPolicy(max_attempts=2, initial=30, max=30))
    async def waits(ctx: JobContext, params: dict[str, Any]) -> None:
        raise ConnectionError("down")

    return registry


async def test_a_failing_attempt_is_retried_and_the_stream_says_so(tmp_path: Path) -> None:
    async with embedded(tmp_path, registry_of({})) as (runner, _):
        job = await runner.submit("flaky", {"fail": 2}, "alice")
        assert job.max_attempts == 3
        events = await events_until_end(runner, job)
        types = [event.type for event in events]
        assert types.count("retrying") == 2
        assert types[-1] == "succeeded"
        retrying = [event.data for event in events if event.type == "retrying"]
        for number, data in enumerate(retrying, 1):
            assert data["state"] == "queued" and data["attempts"] == number
            assert data["next_attempt_at"] is not None
            assert data["last_error"]["type"] == "ConnectionError"
            assert data["progress"] == 0.0  # progress restarts with the next attempt
        runs = [e.data for e in events if e.type == "state" and e.data["state"] == "running"]
        assert [data["attempts"] for data in runs] == [1, 2, 3]
        assert all(data["progress"] == 0.0 for data in runs)
        final = events[-1].data
        assert final["attempts"] == 3 and final["result"] == 3 and final["next_attempt_at"] is None
        seqs = [event.data["seq"] for event in events]
        assert seqs == sorted(set(seqs))


async def test_attempts_never_exceed_max_attempts(tmp_path: Path) -> None:
    async with embedded(tmp_path, registry_of({})) as (runner, store):
        job = await runner.submit("flaky", {"fail": 99}, "alice")
        events = await events_until_end(runner, job)
        assert [e.type for e in events].count("retrying") == 2
        final = events[-1].data
        assert events[-1].type == "failed" and final["attempts"] == 3
        assert final["error"]["type"] == "ConnectionError" and final["last_error"] == final["error"]

        async def stored_failed() -> bool:  # the store is written right after the event
            stored = await store.get(job.id)
            return stored is not None and stored.state is JobState.FAILED

        await eventually(stored_failed)
        assert (await store.get(job.id)).attempts == 3  # type: ignore[union-attr]
        # a submission may lower the handler's max_attempts (retry.T3)
        once = await runner.submit("flaky", {"fail": 99}, "alice", max_attempts=1)
        events = await events_until_end(runner, once)
        assert "retrying" not in [e.type for e in events] and events[-1].data["attempts"] == 1


@pytest.mark.parametrize("kind", ["fatal", "wrong_type"])
async def test_fatal_and_unlisted_errors_fail_at_once(tmp_path: Path, kind: str) -> None:
    async with embedded(tmp_path, registry_of({})) as (runner, _):
        job = await runner.submit(kind, {}, "alice")
        events = await events_until_end(runner, job)
        assert "retrying" not in [e.type for e in events]
        assert events[-1].type == "failed" and events[-1].data["attempts"] == 1


async def test_retry_after_and_timeouts_retry(tmp_path: Path) -> None:
    async with embedded(tmp_path, registry_of({})) as (runner, _):
        asks = await runner.submit("asks", {}, "alice", max_attempts=2)
        slow = await runner.submit("slow", {}, "alice")
        events = await events_until_end(runner, asks)
        assert [e.type for e in events].count("retrying") == 1
        assert events[-1].type == "succeeded" and events[-1].data["attempts"] == 2
        events = await events_until_end(runner, slow)
        assert [e.type for e in events].count("retrying") == 2
        assert events[-1].data["error"]["type"] == "Timeout"


async def test_a_job_waiting_for_its_retry_can_be_cancelled(tmp_path: Path) -> None:
    async with embedded(tmp_path, registry_of({})) as (runner, _):
        job = await runner.submit("waits", {}, "alice")
        patterns_seen = await events_until_retrying(runner, job.id)
        assert patterns_seen["next_attempt_at"] is not None
        cancelled = await runner.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED and cancelled.attempts == 1


async def events_until_retrying(runner: Any, job_id: str) -> dict[str, Any]:
    from jobcast.topics import TopicPattern

    subscription, replay = await runner.hub.subscribe((TopicPattern.parse(f"jobs/{job_id}"),))
    events = list(replay.events) if replay is not None else []
    try:
        async with asyncio.timeout(10):
            while not any(event.type == "retrying" for event in events):
                await subscription.wait()
                events += subscription.take()
    finally:
        runner.hub.unsubscribe(subscription)
    data: dict[str, Any] = next(event.data for event in events if event.type == "retrying")
    return data


async def test_a_retry_waiting_across_a_restart_runs_at_its_time(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    # The retry waits long enough for the server to stop first, even on a loaded machine (a
    # retry that started before the stop would be interrupted instead: another test's case).
    job = await submit(client, server, "flaky", {"succeed_on": 2, "after": 4})
    seen = []
    async for event_type, data in stream_until(client, server, job["id"], "retrying"):
        seen.append((event_type, data))
    next_attempt_at = seen[-1][1]["next_attempt_at"]
    server.stop()  # while the retry waits: the store has it queued with its time

    restarted = make_server(handlers=["tests.handlers"])
    events = await watch(client, restarted, job["id"])
    final = events[-1]
    assert final[0] == "succeeded", events
    assert final[1]["attempts"] == 2 and final[1]["result"] == {"attempt": 2}
    assert final[1]["started_at"] >= next_attempt_at  # not before its time


async def stream_until(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, wanted: str
) -> Any:
    import orjson

    from tests.support import EventStream

    async with EventStream(
        client, f"{server.url}/api/jobs/{job_id}/events", headers=server.auth()
    ) as stream:
        async with asyncio.timeout(10):
            while True:
                event = await stream.next()
                yield event.event, orjson.loads(event.data or "null")
                if event.event == wanted:
                    return
