"""Helpers for the job tests: submit, poll and watch jobs on a live server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tests.support import EventStream, LiveServer, eventually


async def submit(
    client: httpx.AsyncClient,
    server: LiveServer,
    kind: str = "demo",
    params: dict[str, Any] | None = None,
    *,
    sub: str = "alice",
    role: str = "user",
) -> dict[str, Any]:
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": kind, "params": params or {}},
        headers=server.auth(sub, role),
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def watch(
    client: httpx.AsyncClient,
    server: LiveServer,
    job_id: str,
    *,
    sub: str = "alice",
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> list[tuple[str, Any]]:
    """Every (type, data) of a job's SSE stream until the server ends it."""
    async with EventStream(
        client,
        f"{server.url}/api/jobs/{job_id}/events",
        headers=headers or server.auth(sub),
    ) as stream:
        events = await stream.until_end(timeout)
    return [(event.event or "", orjson.loads(event.data or "null")) for event in events]


async def wait_running(
    client: httpx.AsyncClient,
    server: LiveServer,
    job_id: str,
    *,
    sub: str = "alice",
    stage: str | None = None,
) -> None:
    """Return once the job's stream reports it running (no sleeping).

    With ``stage``, wait until its handler has reported that stage too: "running" is stored
    before the handler's first line runs.
    """
    async with EventStream(
        client, f"{server.url}/api/jobs/{job_id}/events", headers=server.auth(sub)
    ) as stream:
        async with asyncio.timeout(10):
            running = False
            while True:
                event = await stream.next()
                data = orjson.loads(event.data or "null")
                if event.event in ("snapshot", "state"):
                    running = data["state"] == "running"
                if running and (stage is None or data.get("stage") == stage):
                    return


async def poll_until_done(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, *, sub: str = "alice"
) -> list[dict[str, Any]]:
    """Poll like a client without streams would: every snapshot until a terminal state."""
    snapshots: list[dict[str, Any]] = []

    async def done() -> bool:
        response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth(sub))
        assert response.status_code == 200, response.text
        snapshots.append(response.json())
        return snapshots[-1]["state"] in ("succeeded", "failed", "cancelled")

    await eventually(done, timeout=15, interval=0.02)  # a polling client's interval
    return snapshots


def assert_monotonic(values: list[float]) -> None:
    assert values == sorted(values), values
