"""WebSocket routes: ``/ws/jobs/{id}`` (one job's events) and ``/ws/events`` (the hub).

Messages to the client are JSON text frames. Events have the shape of ``Event.ws_message``
(``{"id", "topic", "type", "data", "ts"}``); the job socket starts with a ``snapshot`` message
of the same shape. Control messages carry an ``op`` (``ping``, ``error``, ``subscribed``, ...).
The streams themselves live in ``streams/job_socket.py`` and ``streams/event_socket.py``.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket

from jobcast.server.streams.event_socket import serve_event_socket
from jobcast.server.streams.job_socket import serve_job_socket

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


def ws_router(jc: "Runtime") -> APIRouter:
    router = APIRouter(tags=["websocket"])

    @router.websocket("/ws/jobs/{job_id}")
    async def job_socket(websocket: WebSocket, job_id: str) -> None:
        """One job's events, then close 1000 after the terminal event."""
        await serve_job_socket(jc, websocket, job_id)

    @router.websocket("/ws/events")
    async def events_socket(websocket: WebSocket) -> None:
        """Subscribe, unsubscribe and acknowledge with JSON ops; events and pings come back."""
        await serve_event_socket(jc, websocket)

    return router
