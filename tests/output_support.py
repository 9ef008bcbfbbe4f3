"""Reading a task's output stream as a user would: the Durable Streams catch-up ``GET`` of
``/v1/stream/jobs/{id}/{name}``, from the start to the tail, and what the job's snapshot
lists. Shared by the queue integrations' tests."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the workers import ``line`` alone: no server in their processes
    import httpx

    from tests.support import LiveServer

#: How many chunks a writing task writes: the text of chunk ``i`` is ``line(i)``.
CHUNKS = 200


def line(i: int) -> str:
    return f"line {i:03d} of the task's output\n"


def all_lines(n: int = CHUNKS) -> str:
    return "".join(line(i) for i in range(n))


async def read_output(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, name: str = "output"
) -> tuple[bytes, bool]:
    """Everything the stream holds (read in as many catch-up reads as it takes) and whether
    it is closed."""
    url = f"{server.url}/v1/stream/jobs/{job_id}/{name}"
    offset, parts = "-1", []
    for _ in range(1000):  # bounded: a stream that never reaches its tail fails the test
        response = await client.get(url, params={"offset": offset}, headers=server.auth())
        assert response.status_code == 200, response.text
        parts.append(response.content)
        offset = response.headers["stream-next-offset"]
        if response.headers.get("stream-up-to-date") == "true":
            return b"".join(parts), response.headers.get("stream-closed") == "true"
    raise AssertionError(f"{url} never reached its tail")


async def read_json_output(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, name: str
) -> tuple[list[Any], bool]:
    """A JSON stream's messages (each catch-up read is one array) and whether it is closed."""
    url = f"{server.url}/v1/stream/jobs/{job_id}/{name}"
    offset, messages = "-1", []
    for _ in range(1000):
        response = await client.get(url, params={"offset": offset}, headers=server.auth())
        assert response.status_code == 200, response.text
        messages.extend(json.loads(response.content))
        offset = response.headers["stream-next-offset"]
        if response.headers.get("stream-up-to-date") == "true":
            return messages, response.headers.get("stream-closed") == "true"
    raise AssertionError(f"{url} never reached its tail")


async def listed_streams(
    client: httpx.AsyncClient, server: LiveServer, job_id: str
) -> dict[str, dict[str, Any]]:
    """The streams the job's snapshot lists, by name."""
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth())
    assert response.status_code == 200, response.text
    return {info["name"]: info for info in response.json()["streams"]}


#: The cap the writing tests' workers run with (``JOBCAST_MAX_STREAM_BYTES``): above the
#: 200 lines, below what ``write_too_much`` writes.
CAP = 8192


async def assert_task_outputs(
    client: httpx.AsyncClient,
    server: LiveServer,
    written: str,
    failed: str,
    too_much: str,
    *,
    failed_lines: int = 20,
) -> None:
    """What the ended tasks ``write_lines(CHUNKS)``, ``write_then_fail(failed_lines)`` and
    ``write_too_much(...)`` left: every chunk once and in order, each stream closed (the
    tasks ended before this is called: closed no later than their terminal event)."""
    data, closed = await read_output(client, server, written)
    assert data.decode() == all_lines() and closed
    listed = await listed_streams(client, server, written)
    assert listed == {
        "output": {
            "name": "output",
            "path": f"jobs/{written}/output",
            "content_type": "text/plain",
            "length": len(all_lines().encode()),
            "closed": True,
        }
    }

    data, closed = await read_output(client, server, failed)
    assert data.decode() == all_lines(failed_lines) and closed
    messages, closed = await read_json_output(client, server, failed, "events")
    assert messages == [{"i": i} for i in range(failed_lines)] and closed
    assert set(await listed_streams(client, server, failed)) == {"output", "events"}

    data, closed = await read_output(client, server, too_much)
    assert data == b"kept\n" and closed  # the write past the cap kept nothing of itself


async def written(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, start: bytes, name: str = "output"
) -> bool:
    """Whether the stream starts with ``start`` (for ``eventually``: a running task wrote)."""
    url = f"{server.url}/v1/stream/jobs/{job_id}/{name}"
    answer = await client.get(url, params={"offset": "-1"}, headers=server.auth())
    return answer.status_code == 200 and answer.content.startswith(start)
