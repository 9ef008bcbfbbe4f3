"""WebSocket routes: ``/ws/jobs/{id}`` (one job's events), ``/ws/jobs`` (a live job list) and
``/ws/events`` (the hub).

Messages to the client are JSON text frames. Events have the shape of ``Event.ws_message``
(``{"id", "topic", "type", "data", "ts"}``); the job socket starts with a ``snapshot`` message
of the same shape. Control messages carry an ``op`` (``ping``, ``error``, ``subscribed``, ...).
The streams themselves live in ``streams/job_socket.py`` and ``streams/event_socket.py``.

A socket authenticates by itself (a token in the query, a ticket, a header or a first message),
unless the application overrides jobcast's principal dependency
(``app.dependency_overrides[jc.principal]``): the override then decides who the caller is, as
it does for every HTTP route. It is called with no argument, or with the socket when it takes
one (the HTTP routes give it the request).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import inspect
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket

from jobcast.server.routes.table import EVENTS_SOCKET, JOB_SOCKET
from jobcast.server.streams.channel import Caller
from jobcast.server.streams.event_socket import serve_event_socket
from jobcast.server.streams.job_list_socket import serve_job_list_socket
from jobcast.server.streams.job_socket import serve_job_socket

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


async def overridden_caller(runtime: "Runtime", websocket: WebSocket) -> Caller | None:
    """The caller as the application's override of the principal dependency says, if any."""
    overrides: dict[Any, Any] = getattr(websocket.app, "dependency_overrides", None) or {}
    override = overrides.get(runtime.principal)
    if override is None:
        return None
    result = override(websocket) if inspect.signature(override).parameters else override()
    if inspect.isawaitable(result):
        result = await result
    return Caller(result)


def ws_router(jc: "Runtime") -> APIRouter:
    router = APIRouter(tags=["websocket"])

    @router.websocket(JOB_SOCKET.path)
    async def job_socket(websocket: WebSocket, job_id: str) -> None:
        """One job's events, then close 1000 after the terminal event."""
        caller = await overridden_caller(jc, websocket)
        await serve_job_socket(jc, websocket, job_id, caller=caller)

    @router.websocket("/ws/jobs")
    async def job_list_socket(websocket: WebSocket) -> None:
        """A live job list (``?tag=&kind=&state=``): snapshots, synced, then changes."""
        await serve_job_list_socket(jc, websocket, await overridden_caller(jc, websocket))

    @router.websocket(EVENTS_SOCKET.path)
    async def events_socket(websocket: WebSocket) -> None:
        """Subscribe, unsubscribe and acknowledge with JSON ops; events and pings come back."""
        await serve_event_socket(jc, websocket, await overridden_caller(jc, websocket))

    return router
