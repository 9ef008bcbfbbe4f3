"""WebSocket routes: ``/ws/jobs/{id}`` (one job's events) and ``/ws/events`` (the hub).

Messages to the client are JSON text frames. Events have the shape of ``Event.ws_message``
(``{"id", "topic", "type", "data", "ts"}``); the job socket starts with a ``snapshot`` message
of the same shape. Control messages carry an ``op`` (``ping``, ``error``, ``subscribed``, ...).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, WebSocket

from jobcast.errors import JobcastError
from jobcast.events import Event
from jobcast.server.http.browser import origin_allowed
from jobcast.server.streams.channel import (
    CLOSE_NORMAL,
    Channel,
    SocketClosed,
    subscription_close_code,
)
from jobcast.server.streams.event_socket import EventSocket
from jobcast.server.streams.job_streams import (
    JobStreamPlan,
    JobView,
    WsRender,
    is_terminal_event,
    plan_job_stream,
    ws_snapshot,
    ws_terminal,
)
from jobcast.subscription import CloseReason, Subscription

if TYPE_CHECKING:
    from jobcast.server.app import Jobcast

PING = '{"op":"ping"}'


async def accept_from_allowed_origin(jc: "Jobcast", websocket: WebSocket) -> bool:
    """Accept the handshake, or refuse it (HTTP 403) when a browser sent a foreign Origin:
    cookies ride along on cross-site WebSocket handshakes, and CORS does not apply to them."""
    if not origin_allowed(jc.settings, websocket):
        await websocket.close(code=1008)
        return False
    await websocket.accept()
    return True


def ws_router(jc: "Jobcast") -> APIRouter:
    router = APIRouter(tags=["websocket"])

    @router.websocket("/ws/jobs/{job_id}")
    async def job_socket(websocket: WebSocket, job_id: str) -> None:
        """One job's events, then close 1000 after the terminal event."""
        await jc.job_socket(websocket, job_id)

    @router.websocket("/ws/events")
    async def events_socket(websocket: WebSocket) -> None:
        """Subscribe, unsubscribe and acknowledge with JSON ops; events and pings come back."""
        await serve_event_socket(jc, websocket)

    return router


async def serve_event_socket(jc: "Jobcast", websocket: WebSocket) -> None:
    """``/ws/events`` (the route, and the fast entrance)."""
    with jc.metrics.websocket():
        await _serve_event_socket(jc, websocket)


async def _serve_event_socket(jc: "Jobcast", websocket: WebSocket) -> None:
    if not await accept_from_allowed_origin(jc, websocket):
        return
    channel = Channel(jc, websocket)
    try:
        principal, first = await channel.authenticate(required=False)
    except JobcastError as exc:
        await channel.fail(exc)
        return
    except SocketClosed:
        return
    client_id = websocket.query_params.get("client_id")
    await EventSocket(jc, channel, principal, client_id).run(first)


async def serve_job_socket(
    jc: "Jobcast",
    websocket: WebSocket,
    job_id: str,
    *,
    kind: str | None = None,
    render: WsRender | None = None,
) -> None:
    """Accept, authenticate and stream one job's events; close 1000 after the terminal one."""
    with jc.metrics.websocket():
        await _serve_job_socket(jc, websocket, job_id, kind, render)


async def _serve_job_socket(
    jc: "Jobcast", websocket: WebSocket, job_id: str, kind: str | None, render: WsRender | None
) -> None:
    if not await accept_from_allowed_origin(jc, websocket):
        return
    channel = Channel(jc, websocket)
    try:
        principal, _ = await channel.authenticate(required=True)
        resume = websocket.query_params.get("last_event_id")
        plan = await plan_job_stream(
            jc, job_id, principal, resume, kind=kind, transport="websocket"
        )
    except JobcastError as exc:
        await channel.fail(exc)
        return
    except SocketClosed:
        return
    await _stream_job(jc, channel, WsJobMessages(plan, render))


class WsJobMessages:
    """The messages of a job's socket: jobcast's own, or an application's rendering (J4)."""

    def __init__(self, plan: JobStreamPlan, render: WsRender | None) -> None:
        self.plan = plan
        self.render = render
        self.view = JobView(plan.job.to_dict())

    def snapshot(self) -> str | None:
        if self.render is None:
            return ws_snapshot(self.plan)
        plan = self.plan
        return self._rendered(self.render, "snapshot", plan.job.to_dict(), plan.snapshot_id)

    def terminal(self) -> str | None:
        if self.render is None:
            return ws_terminal(self.plan)
        job = self.plan.job
        return self._rendered(self.render, job.state.value, job.to_dict(), self.plan.snapshot_id)

    def event(self, event: Event) -> str | None:
        if self.render is None:
            return event.ws_message.decode()
        return self._rendered(self.render, event.type, event.data, event.id)

    @property
    def ping(self) -> str | None:
        # A rendered socket speaks the application's protocol, which may have no ping message:
        # the server's WebSocket protocol pings keep it alive instead.
        return PING if self.render is None else None

    def _rendered(
        self, render: WsRender, event_type: str, data: Any, event_id: str | None
    ) -> str | None:
        value = render(self.view.apply(event_type, data, event_id))
        return None if value is None else orjson.dumps(value).decode()


async def _send(channel: Channel, message: str | None) -> None:
    if message is not None:
        await channel.send(message)


async def _stream_job(jc: "Jobcast", channel: Channel, messages: WsJobMessages) -> None:
    plan = messages.plan
    subscription = plan.subscription
    reader: asyncio.Task[None] | None = None
    try:
        if plan.snapshot:
            await _send(channel, messages.snapshot())
        if subscription is None:
            for event in plan.events:
                await _send(channel, messages.event(event))
            if plan.terminal:
                await _send(channel, messages.terminal())
            await channel.close(CLOSE_NORMAL, "job finished")
            return
        reader = asyncio.create_task(_ignore_incoming(channel, subscription))
        replayed = plan.replay.events if plan.replay is not None else []
        finished = await _send_until_terminal(channel, messages, replayed)
        while not finished:
            await subscription.wait()
            if subscription.close_reason is not None:
                break
            events = subscription.take()
            if events:
                finished = await _send_until_terminal(channel, messages, events)
            elif subscription.heartbeat_due:
                await _send(channel, messages.ping)
            subscription.mark_written()
        reason = subscription.close_reason
        if finished:
            await channel.close(CLOSE_NORMAL, "job finished")
        elif reason is not None and reason is not CloseReason.CLIENT:
            await channel.error(f"stream closed: {reason.value}; resume with last_event_id")
            await channel.close(subscription_close_code(reason), reason.value)
    except SocketClosed:
        pass
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if subscription is not None:
            jc.hub.unsubscribe(subscription)


async def _send_until_terminal(
    channel: Channel, messages: WsJobMessages, events: list[Event]
) -> bool:
    for event in events:
        await _send(channel, messages.event(event))
        if is_terminal_event(event):
            return True
    return False


async def _ignore_incoming(channel: Channel, subscription: Subscription) -> None:
    """Read (and drop) what the client sends, to notice it leaving or flooding."""
    with contextlib.suppress(SocketClosed):
        while True:
            await channel.receive()
    subscription.close(CloseReason.CLIENT)
