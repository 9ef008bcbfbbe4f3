"""A live job list over a WebSocket (``/ws/jobs?tag=&kind=&state=``): the same plan and view as
the SSE list (``job_list.py``, V1-V5), each item a JSON text message ``{"type", "id",
"data"}`` (``snapshot``, ``synced``, ``removed``), written by the one stream writer into the
socket. Pings keep it alive; a stream closed by the server says why (``{"op": "error"}``) and
closes with that reason's code; the client reconnects and the list starts afresh (V4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from starlette.websockets import WebSocket

from jobcast.errors import InvalidInput, JobcastError
from jobcast.events import Event
from jobcast.jobs.model import JobState
from jobcast.jobs.tags import MAX_TAGS, valid_tag
from jobcast.server.streams.channel import (
    PING,
    Caller,
    Channel,
    SocketClosed,
    accept_from_allowed_origin,
    error_message,
)
from jobcast.server.streams.job_list import (
    MAX_LIST_JOBS,
    Item,
    JobFilter,
    JobListPlan,
    item_json,
    plan_job_list,
)
from jobcast.server.streams.job_socket import SocketSink
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason, Subscription

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

MAX_LIMIT = MAX_LIST_JOBS


def filter_of(websocket: WebSocket) -> tuple[JobFilter, int]:
    """The list's filter and limit from the socket's query, checked as the SSE route's."""
    query = websocket.query_params
    tags = query.getlist("tag")
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags")
    try:
        states = tuple(JobState(value) for value in query.getlist("state"))
        limit = int(query.get("limit", "200"))
    except ValueError:
        raise InvalidInput("state is one of the job states; limit a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit is 1 to {MAX_LIMIT}")
    kind = query.get("kind")
    if kind is not None and not 0 < len(kind) <= 64:
        raise InvalidInput("kind is 1 to 64 characters")
    unique = tuple(dict.fromkeys(valid_tag(tag) for tag in tags))
    return JobFilter(unique, kind, states), limit


def _messages(items: list[Item]) -> list[str]:
    return [  # a shared snapshot's JSON is encoded once (snapshots.S4)
        f'{{"type":{orjson.dumps(kind).decode()},"id":{orjson.dumps(event_id).decode()},'
        f'"data":{item_json(data)}}}'
        for kind, data, event_id in items
    ]


class JobListSocketFraming:
    """A live job list as WebSocket messages (``writer.Framing``; a chunk is a list)."""

    __slots__ = ("final", "plan")

    def __init__(self, plan: JobListPlan) -> None:
        self.plan = plan
        self.final: Callable[[Event], bool] | None = None  # a list never ends by itself

    def opening(self) -> tuple[list[str], bool]:
        plan = self.plan
        messages = _messages(plan.view.opening())
        if plan.replay is not None:
            messages += self.frames(plan.replay.events)
        return messages, False

    def frames(self, events: list[Event]) -> list[str]:
        items = self.plan.view.items
        return [message for event in events for message in _messages(items(event))]

    def heartbeat(self) -> list[str]:
        return [*_messages(self.plan.view.quiet()), PING]

    def closing(self, reason: CloseReason) -> list[str]:
        return [error_message(f"stream closed: {reason.value}; reconnect for a fresh list")]


async def serve_job_list_socket(jc: Runtime, websocket: WebSocket, caller: Caller | None) -> None:
    """Accept, authenticate (unless the ``caller`` is known) and stream a live job list."""
    with jc.metrics.websocket():
        if not await accept_from_allowed_origin(jc.settings, websocket):
            return
        channel = Channel(jc, websocket)
        try:
            if caller is None:
                principal, _ = await channel.authenticate(required=True)
            else:
                principal = caller.principal
            job_filter, limit = filter_of(websocket)
            plan = await plan_job_list(jc, principal, job_filter, limit, transport="websocket")
        except JobcastError as exc:
            await channel.fail(exc)
            return
        except SocketClosed:
            return
        subscription = plan.subscription
        sink = SocketSink(channel, subscription)
        writer = StreamWriter(
            subscription,
            JobListSocketFraming(plan),
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


async def _watch_incoming(channel: Channel, subscription: Subscription) -> None:
    """Read (and drop) what the client sends, to notice it leaving."""
    with contextlib.suppress(SocketClosed):
        while True:
            await channel.receive()
    subscription.close(CloseReason.CLIENT)
