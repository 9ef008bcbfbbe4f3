"""The seed-style baseline: the hand-written SSE manager that jobcast replaces.

It follows the design the systems jobcast generalises wrote by hand, and is deliberately not
optimised beyond it, so every benchmark row can be read as a ratio to it:

- a singleton manager holds one unbounded ``asyncio.Queue`` per connected client;
- ``broadcast_event()`` loops over every client, skips those not subscribed to the event's
  topic, and puts the event into each remaining client's queue;
- each client's queue is streamed by sse-starlette's ``EventSourceResponse``, which encodes
  every event once per client;
- workers publish through an internal ``POST /broadcast`` endpoint (no history, no ids beyond
  a counter, no auth: the seeds had none).

It also runs "jobs" the seed way for the jobs scenario: ``POST /jobs`` starts a background task
that updates a dict and broadcasts every progress update, then a ``complete`` event, after which
the job's streams end.

Run it with ``uvicorn bench.baselines.seed_app:app``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

TERMINAL = {"complete", "error"}


@dataclass
class ClientConnection:
    topics: set[str]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class SSEManager:
    """One per process: every client's queue, and the broadcast loop over all of them."""

    def __init__(self) -> None:
        self.clients: dict[str, ClientConnection] = {}
        self.ids = itertools.count(1)

    def connect(self, topics: list[str]) -> tuple[str, ClientConnection]:
        client_id = str(uuid.uuid4())
        client = self.clients[client_id] = ClientConnection(set(topics))
        return client_id, client

    def disconnect(self, client_id: str) -> None:
        self.clients.pop(client_id, None)

    async def broadcast_event(self, event: dict[str, Any]) -> None:
        event["id"] = next(self.ids)
        for client in list(self.clients.values()):
            if client.topics and event["topic"] not in client.topics:
                continue
            await client.queue.put(event)


def create_app() -> FastAPI:
    manager = SSEManager()
    jobs: dict[str, dict[str, Any]] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(30)
            await manager.broadcast_event(
                {"topic": "", "type": "heartbeat", "data": {"timestamp": time.time()}}
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(heartbeat())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "connected_clients": len(manager.clients)}

    @app.post("/broadcast")
    async def broadcast(event: dict[str, Any]) -> dict[str, str]:
        await manager.broadcast_event(event)
        return {"status": "broadcasted"}

    @app.get("/events")
    async def events(request: Request, topic: Annotated[list[str], Query()] = []) -> Any:  # noqa: B006
        client_id, client = manager.connect(topic)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                while True:
                    event = await client.queue.get()
                    yield ServerSentEvent(
                        id=str(event["id"]), event=event["type"], data=json.dumps(event["data"])
                    )
                    if event["type"] in TERMINAL and event["topic"].startswith("jobs/"):
                        return
            finally:
                manager.disconnect(client_id)

        return EventSourceResponse(stream(), ping=15)

    async def run_job(job_id: str, steps: int, delay: float) -> None:
        job = jobs[job_id]
        topic = f"jobs/{job_id}"
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)
            job["progress"] = 100 * step / steps
            await manager.broadcast_event(
                {"topic": topic, "type": "progress", "data": {"seq": step, **job}}
            )
        job["status"] = "complete"
        await manager.broadcast_event({"topic": topic, "type": "complete", "data": dict(job)})

    @app.post("/jobs")
    async def submit(body: dict[str, Any]) -> dict[str, Any]:
        job_id = str(body.get("id") or uuid.uuid4().hex)  # the benchmark picks ids up front
        jobs[job_id] = {"id": job_id, "status": "running", "progress": 0.0}
        params = body.get("params", {})
        task = asyncio.create_task(
            run_job(job_id, int(params.get("steps", 100)), float(params.get("delay", 0.01)))
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return {"id": job_id}

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return jobs[job_id]

    return app


app = create_app()
