"""A job's WebSocket (``/ws/jobs/{id}``, and an application's own job sockets).

The same stream as a job's SSE stream (``job_plan.py``: snapshot, replay, live, the end after
the terminal event), framed as JSON text messages (:class:`JobSocketFraming`) and written by
the one stream writer into the socket (:class:`SocketSink`). The socket ends with close 1000
after the terminal event; a stream closed for any other reason sends an ``{"op": "error"}``
saying why, then the close code for that reason (``channel.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from jobcast.errors import JobcastError
from jobcast.events import Event
from jobcast.server.streams.channel import (
    CLOSE_NORMAL,
    PING,
    Caller,
    Channel,
    SocketClosed,
    accept_from_allowed_origin,
    error_message,
    subscription_close_code,
)
from jobcast.server.streams.job_frames import WsJobFrames, WsRender
from jobcast.server.streams.job_plan import JobStreamPlan, is_terminal_event, plan_job_stream
from jobcast.server.streams.pump import PumpedSink
from jobcast.server.streams.writer import Source, StreamWriter
from jobcast.subscription import CloseReason, Subscription

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


async def serve_job_socket(
    jc: Runtime,
    websocket: WebSocket,
    job_id: str,
    *,
    kind: str | None = None,
    render: WsRender | None = None,
    caller: Caller | None = None,
) -> None:
    """Accept, authenticate (unless the ``caller`` is known) and stream one job's events;
    close 1000 after the terminal one."""
    with jc.metrics.websocket():
        if not await accept_from_allowed_origin(jc.settings, websocket):
            return
        channel = Channel(jc, websocket)
        try:
            if caller is None:
                principal, _ = await channel.authenticate(required=True)
            else:
                principal = caller.principal
            resume = websocket.query_params.get("last_event_id")
            plan = await plan_job_stream(
                jc, job_id, principal, resume, kind=kind, transport="websocket"
            )
        except JobcastError as exc:
            await channel.fail(exc)
            return
        except SocketClosed:
            return
        frames = WsJobFrames(plan, render)
        if plan.subscription is None:
            await _send_finished(channel, plan, frames)
            return
        subscription = plan.subscription
        sink = SocketSink(channel, subscription)
        framing = JobSocketFraming(plan, frames)
        writer = StreamWriter(
            subscription,
            framing,
            sink,
            on_close=jc.hub.unsubscribe,
            on_write=jc.metrics.observe_write,
        )
        reader = asyncio.create_task(_watch_incoming(channel, subscription))
        try:
            await sink.run(writer)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _send_finished(channel: Channel, plan: JobStreamPlan, frames: WsJobFrames) -> None:
    """A finished job (job_plan.J3): what the client lacks, then close 1000."""
    messages = [frames.snapshot()] if plan.snapshot else []
    messages += [frames.event(event) for event in plan.events]
    if plan.terminal:
        messages.append(frames.terminal())
    with contextlib.suppress(SocketClosed):
        for message in messages:
            if message is not None:
                await channel.send(message)
        await channel.close(CLOSE_NORMAL, "job finished")


class JobSocketFraming:
    """A job's stream as WebSocket messages (``writer.Framing``; a chunk is a list of them)."""

    __slots__ = ("final", "job_frames", "plan")

    def __init__(self, plan: JobStreamPlan, job_frames: WsJobFrames) -> None:
        self.plan = plan
        self.job_frames = job_frames
        self.final: Callable[[Event], bool] | None = is_terminal_event

    def opening(self) -> tuple[list[str], bool]:
        plan = self.plan
        messages = []
        if plan.snapshot and (snapshot := self.job_frames.snapshot()) is not None:
            messages.append(snapshot)
        events = plan.replay.events if plan.replay is not None else []
        finished = False
        for index, event in enumerate(events):
            if is_terminal_event(event):
                events, finished = events[: index + 1], True
                break
        return messages + self.frames(events), finished

    def frames(self, events: list[Event]) -> list[str]:
        event = self.job_frames.event
        return [message for e in events if (message := event(e)) is not None]

    def heartbeat(self) -> list[str]:
        # A rendered socket speaks the application's protocol, which may have no ping message:
        # the server's WebSocket protocol pings keep it alive instead.
        return [PING] if self.job_frames.render is None else []

    def closing(self, reason: CloseReason) -> list[str]:
        return [error_message(f"stream closed: {reason.value}; resume with last_event_id")]


def close_code_of(reason: CloseReason) -> tuple[int, str]:
    """The close code and reason text of a stream closed for ``reason``."""
    return subscription_close_code(reason), reason.value


class SocketSink(PumpedSink[list[str]]):
    """A WebSocket as a stream's sink, pumped by the socket's own coroutine (pump.P1-P3)."""

    gone = (SocketClosed,)

    def __init__(
        self,
        channel: Channel,
        source: Source[Any],
        *,
        close_code: Callable[[CloseReason], tuple[int, str]] = close_code_of,
    ) -> None:
        super().__init__(source)
        self.channel = channel
        self.close_code = close_code

    async def send(self, chunk: list[str]) -> None:
        for message in chunk:
            await self.channel.send(message)

    async def finish(self, closing: list[str] | None, reason: CloseReason | None) -> None:
        if reason is None:
            await self.channel.close(CLOSE_NORMAL, "job finished")
            return
        await self.send(closing or [])
        await self.channel.close(*self.close_code(reason))


async def _watch_incoming(channel: Channel, subscription: Subscription) -> None:
    """Read (and drop) what the client sends, to notice it leaving or flooding."""
    with contextlib.suppress(SocketClosed):
        while True:
            await channel.receive()
    subscription.close(CloseReason.CLIENT)
