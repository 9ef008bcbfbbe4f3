"""A queue task's output streams at the reporter (``integrations._streams``, ``_stream_writer``,
``_direct_streams``): what a task gets back for bad requests, JSON messages over HTTP, and the
stand-in when jobcast cannot be reached. The workers' end-to-end tests are in
``test_integrations_{celery,rq,dramatiq,http}.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from jobcast.errors import InvalidInput
from jobcast.integrations._reporter import Reporter
from jobcast.jobs.model import Job, JobState
from tests.output_support import read_json_output, read_output
from tests.support import LiveServer, eventually

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
async def reporter(server: LiveServer) -> AsyncIterator[Reporter]:
    token = server.token("celery-workers", "service")
    reporter = Reporter("celery", jobcast=server.url, token=token, wait=5)
    yield reporter
    await asyncio.to_thread(reporter.close)


def task_job() -> Job:
    return Job(
        id=f"s-{uuid.uuid4().hex[:8]}", kind="media.transcribe", owner="alice", runs_on="celery"
    )


async def test_a_task_s_bad_stream_calls_raise_in_the_task(
    server: LiveServer, client: httpx.AsyncClient, reporter: Reporter
) -> None:
    job = task_job()
    assert await asyncio.to_thread(reporter.started, job)
    with pytest.raises(InvalidInput, match="a stream name is"):
        reporter.stream(job.id, "no spaces", "text/plain")
    out = await asyncio.to_thread(reporter.stream, job.id, "output", "text/plain")
    assert await asyncio.to_thread(reporter.stream, job.id, "output", "text/plain") is out
    with pytest.raises(InvalidInput, match="already text/plain"):
        reporter.stream(job.id, "output", "application/json")
    with pytest.raises(TypeError, match="text or bytes"):
        out.write(3)
    events = await asyncio.to_thread(reporter.stream, job.id, "events", "application/json")
    with pytest.raises(TypeError, match="JSON values"):
        events.write(float("nan"))
    out.write("one\n")
    out.write(b"two\n")
    events.write([1, 2])  # one message, itself an array
    events.write({"three": 3})
    out.close()
    with pytest.raises(ValueError, match="closed"):
        out.write("after the close")
    await asyncio.to_thread(reporter.finished, job.id, JobState.SUCCEEDED, result=None)

    async def ended() -> bool:
        answer = await client.get(f"{server.url}/api/jobs/{job.id}", headers=server.auth())
        return answer.status_code == 200 and answer.json()["state"] == "succeeded"

    await eventually(ended, timeout=20, interval=0.05)
    assert await read_output(client, server, job.id) == (b"one\ntwo\n", True)
    assert await read_json_output(client, server, job.id, "events") == (
        [[1, 2], {"three": 3}],
        True,
    )


async def test_a_task_whose_jobcast_is_unreachable_still_writes(tmp_path: Path) -> None:
    """Nothing listens at the broker's address: the task gets a stream whose writes are
    dropped and counted (``_reporter.P6``), and goes on."""
    store = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    reporter = Reporter("celery", jobcast="redis://127.0.0.1:9/0", store=store, wait=1)
    try:
        out = await asyncio.to_thread(reporter.stream, "unreached", "output", "text/plain")
        out.write("lost\n")
        out.write("lost too\n")
        assert reporter.counts["output_dropped"] == 2
        out.close()
        with pytest.raises(ValueError, match="closed"):
            out.write("after the close")
    finally:
        await asyncio.to_thread(reporter.close)
