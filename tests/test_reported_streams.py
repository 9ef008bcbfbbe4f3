"""The output streams of a queue task's job close when the job ends, however it ends
(``jobs/reported.R6``): a live reader of ``/v1/stream/jobs/{id}/output`` that waits at the
tail sees the stream closed with what was written, instead of waiting for ever. The task's
side is played over HTTP, as an HTTP reporter (``integrations/_http.py``) would: its reports
to ``/api/job-reports`` and its output through the Durable Streams API, with a service token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from jobcast.client import AsyncClient
from tests.output_support import read_output
from tests.support import LiveServer, eventually

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def service(server: LiveServer) -> dict[str, str]:
    return server.auth("worker", "service")


async def report(client: httpx.AsyncClient, server: LiveServer, body: dict[str, Any]) -> None:
    response = await client.post(
        f"{server.url}/api/job-reports", json={"reports": [body]}, headers=service(server)
    )
    assert response.status_code == 200 and response.json()["results"] == ["applied"], response.text


async def running_task_writing(client: httpx.AsyncClient, server: LiveServer, text: str) -> str:
    """A running RQ task's job whose task wrote ``text`` to its open ``output`` stream."""
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    job = {"id": job_id, "kind": "media.transcribe", "owner": "alice", "runs_on": "rq"}
    await report(client, server, {"type": "running", "job": job})
    url = f"{server.url}/v1/stream/jobs/{job_id}/output"
    headers = service(server) | {"content-type": "text/plain"}
    created = await client.put(url, headers=headers)
    assert created.status_code == 201, created.text
    appended = await client.post(url, content=text.encode(), headers=headers)
    assert appended.status_code in (200, 204), appended.text
    return job_id


async def swept(client: httpx.AsyncClient, server: LiveServer) -> bool:
    """One sweep of the rq queue (as a surviving worker asks for), True once it failed one."""
    response = await client.post(
        f"{server.url}/api/job-reports/sweep",
        json={"runs_on": "rq", "silent_seconds": 0.01},
        headers=service(server),
    )
    assert response.status_code == 200, response.text
    return bool(response.json()["swept"])


async def failed(client: httpx.AsyncClient, server: LiveServer, job_id: str) -> None:
    """The task's worker reports its end; it closed none of the job's streams."""
    error = {"type": "RuntimeError", "message": "the task failed"}
    await report(client, server, {"type": "failed", "id": job_id, "error": error})


@pytest.mark.parametrize("end", ["swept", "failed"])
async def test_a_task_s_end_closes_its_output_stream_for_a_waiting_reader(
    server: LiveServer, client: httpx.AsyncClient, end: str
) -> None:
    """Swept: its worker died (reported.R4), nothing else would close it. Failed: its
    worker's end left it open (a reporter that does not close, a close that failed)."""
    job_id = await running_task_writing(client, server, "started\n")
    async with AsyncClient(server.url, token=server.token()) as jobcast:
        reading = jobcast.read_stream(job_id)  # live: waits at the tail until the stream ends
        async with asyncio.timeout(20):
            first = await anext(aiter(reading))  # read: the reader now waits at the tail
            if end == "swept":
                await eventually(lambda: swept(client, server), timeout=10, interval=0.05)
            else:
                await failed(client, server, job_id)
            rest = [piece async for piece in reading]
    assert first + "".join(rest) == "started\n"
    assert await read_output(client, server, job_id) == (b"started\n", True)
    job = (await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth())).json()
    assert job["state"] == "failed"
    assert [(s["name"], s["closed"]) for s in job["streams"]] == [("output", True)]
