"""``/ws/events``: one client's subscriptions to the hub over a WebSocket.

Client ops: ``{"op": "subscribe", "topics": [...], "last_event_id": ...}``,
``{"op": "unsubscribe", "topics": [...]}``, ``{"op": "ack", "id": ...}``, ``{"op": "ping"}``.
Server messages: events, and ``subscribed``, ``unsubscribed``, ``reset``, ``ping``, ``pong``,
``error`` ops.

Decisions (cited as W1..W5):

W1. One hub subscription per pattern, so ``unsubscribe`` closes exactly what it names and a
    later ``subscribe`` resumes its own pattern without disturbing the others. Events taken
    from several subscriptions at once are merged in position order, the replays of one
    ``subscribe`` too (with what went live meanwhile), so a client that resumes from the last
    id it received misses nothing; an event matched by two overlapping patterns is sent once.
    The socket counts as one stream against the per-subject cap while it holds any
    subscription, however many topics it names (``Hub.hold_stream``).
W2. One writer per socket, the stream writer every stream has (``writer.py``), following the
    socket's feed (``socket_feed.py``): the reader only queues control replies and replays into
    its bounded outbox. A client whose outbox overflows is closed (1008).
W3. Acknowledgements are durable per ``client_id`` (scoped to the token's subject): a
    ``subscribe`` without ``last_event_id`` resumes after the last acknowledged event. Acks are
    cumulative by id and written at most once a second and when the socket closes, so a crash
    can replay up to a second of acknowledged events (at-least-once, never a loss).
W4. Malformed or refused ops get an ``error`` message and the connection stays open, except
    a subscribe refused because the socket's credential expired: that closes with 4401.
W5. Replays are bounded like the outbox: a replay that would take the outbox past
    ``MAX_OUTBOX - CONTROL_ROOM`` messages, or its queued replays past ``max_replay_bytes`` of
    event data, is sent as a ``reset`` (``too_far_behind``) instead, so a client far behind is
    told to resync rather than closed (1008) by its own resume.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket

from jobcast.auth import Principal
from jobcast.brokers.base import Gap, Replay
from jobcast.errors import InvalidInput, JobcastError, Unauthorized
from jobcast.events import Event
from jobcast.server.http.credentials import stream_owner
from jobcast.server.streams.channel import (
    CLOSE_RESTART,
    PING,
    Caller,
    Channel,
    SocketClosed,
    accept_from_allowed_origin,
    close_code,
    error_message,
    subscription_close_code,
)
from jobcast.server.streams.job_socket import SocketSink
from jobcast.server.streams.socket_acks import SocketAcks
from jobcast.server.streams.socket_feed import MAX_OUTBOX, SocketFeed
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import parse_patterns

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

CONTROL_ROOM = 1_000  # outbox places kept for replies once replays are queued (W5)


async def serve_event_socket(
    jc: Runtime, websocket: WebSocket, caller: Caller | None = None
) -> None:
    """``/ws/events``: accept, authenticate (unless the ``caller`` is known), then serve the
    client's ops until it leaves."""
    with jc.metrics.websocket():
        if not await accept_from_allowed_origin(jc.settings, websocket):
            return
        channel = Channel(jc, websocket)
        try:
            if caller is None:
                principal, first = await channel.authenticate(required=False)
            else:
                principal, first = caller.principal, None
        except JobcastError as exc:
            await channel.fail(exc)
            return
        except SocketClosed:
            return
        client_id = websocket.query_params.get("client_id")
        await EventSocket(jc, channel, principal, client_id).run(first)


class EventSocket:
    def __init__(
        self, jc: Runtime, channel: Channel, principal: Principal | None, client_id: str | None
    ) -> None:
        self.jc = jc
        self.channel = channel
        self.principal = principal
        self.subject = principal.subject if principal else ""
        self.acks = SocketAcks(jc.store, self.subject, client_id)  # W3
        self.feed = SocketFeed(jc.hub, jc.settings.heartbeat_interval)
        self.subscriptions = self.feed.subscriptions
        self.outbox = self.feed.outbox
        #: The subject this socket counts as a stream of, while it holds subscriptions (W1).
        self._holding: str | None = None

    async def run(self, first: Any) -> None:
        feed = self.feed
        sink = SocketSink(self.channel, feed, close_code=self._close_code)
        writer = StreamWriter(
            feed,
            EventSocketFraming(feed),
            sink,
            on_close=lambda _: None,  # the subscriptions are handed back below
            on_write=self.jc.metrics.observe_write,
        )
        pump = asyncio.create_task(sink.run(writer))
        try:
            with contextlib.suppress(SocketClosed):
                if first is not None:
                    await self._handle(first)
                while not pump.done():
                    await self._handle(await self.channel.receive())
        finally:
            for text in list(self.subscriptions):
                subscription = feed.remove(text)
                if subscription is not None:
                    subscription.close(CloseReason.CLIENT)
                    self.jc.hub.unsubscribe(subscription)
            self._release_if_idle()
            if not pump.done():
                feed.close(CloseReason.CLIENT)
            with contextlib.suppress(asyncio.CancelledError, SocketClosed):
                await pump
            await self.acks.save(force=True)

    def _close_code(self, reason: CloseReason) -> tuple[int, str]:
        ending = self.feed.ending
        if ending is not None and ending[0] is reason:
            return ending[1], ending[2]
        if reason is CloseReason.DRAIN:
            return CLOSE_RESTART, reason.value
        return subscription_close_code(reason), reason.value

    # -- ops (W4) --------------------------------------------------------------------------

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        try:
            if op == "subscribe":
                await self._subscribe(message.get("topics"), message.get("last_event_id"))
            elif op == "unsubscribe":
                self._unsubscribe(message.get("topics"))
            elif op == "ack":
                await self.acks.acknowledge(message.get("id"))
            elif op == "ping":
                self._queue('{"op":"pong"}')
            else:
                raise InvalidInput("unknown op; use subscribe, unsubscribe, ack or ping")
        except JobcastError as exc:
            if isinstance(exc, Unauthorized) and exc.reason == "token_expired":
                # The socket's credential ran out: only a renewed one on a new socket can
                # subscribe, which is what 4401 tells a client (as when it expires mid-stream).
                self.feed.end(CloseReason.EXPIRED, close_code(exc), exc.reason, exc.message)
                return
            self._queue_json({"op": "error", "error": exc.code, "message": exc.message, "for": op})

    async def _subscribe(self, topics: Any, last_event_id: Any) -> None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise InvalidInput("'topics' must be a list of topic patterns")
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise InvalidInput("'last_event_id' must be a string")
        limit = self.jc.settings.max_topics_per_subscription
        patterns = parse_patterns(topics, limit=limit)
        new = [p for p in patterns if p.text not in self.subscriptions]
        if len(self.subscriptions) + len(new) > limit:
            raise InvalidInput(f"at most {limit} topics per socket")
        allow = self.jc.policy.subscription_filter(self.principal, patterns)
        if last_event_id is None:
            last_event_id = await self.acks.resume_from()
        owner = stream_owner(self.principal)  # refuses a credential past its expiry
        if new and self._holding is None and owner:
            self.jc.hub.hold_stream(owner["owner"])  # W1: the socket is one stream
            self._holding = owner["owner"]
        opened: list[tuple[str, Subscription, Replay | None]] = []
        try:
            for pattern in new:
                subscription, replay = await self.jc.hub.subscribe(
                    (pattern,),
                    last_event_id=last_event_id,
                    allow=allow,
                    transport="websocket",
                    expires_at=owner.get("expires_at"),
                )
                opened.append((pattern.text, subscription, replay))
        except BaseException:
            for _, subscription, _ in opened:
                self.jc.hub.unsubscribe(subscription)
            self._release_if_idle()
            raise
        # From here on nothing awaits: the reply, then the replays, go to the outbox before the
        # writer can see the subscriptions, so every replayed event precedes every live one.
        self._queue_json({"op": "subscribed", "topics": [p.text for p in patterns]})
        # W1: replayed events and resets (each at its head) leave in position order, with what
        # went live while the replays were read, so the ids a client sees never go back.
        ordered: list[tuple[int, str | Event]] = []
        for text, subscription, replay in opened:
            if replay is not None and replay.gap is None:
                replay = self._bounded(replay, ordered)
            if replay is not None and replay.gap is not None:
                reset = {
                    "op": "reset",
                    "topic": text,
                    "reason": replay.gap,
                    "id": str(replay.head),
                    "last_event_id": last_event_id,
                }
                ordered.append((replay.head.position, orjson.dumps(reset).decode()))
            elif replay is not None:
                ordered.extend((event.position, event) for event in replay.events)
            self.feed.add(text, subscription)
        if ordered:
            for subscription in self.subscriptions.values():
                ordered.extend((event.position, event) for event in subscription.take())
            ordered.sort(key=lambda entry: (entry[0], isinstance(entry[1], str)))
            for _, item in ordered:
                self._queue(item)

    def _bounded(self, replay: Replay, ahead: list[tuple[int, str | Event]]) -> Replay:
        """``replay``, or a ``too_far_behind`` gap when the outbox cannot take it after what is
        in it and ``ahead`` of it (W5)."""
        items = [*self.outbox, *(item for _, item in ahead)]
        queued = sum(len(item.data_json) for item in items if isinstance(item, Event))
        size = sum(len(event.data_json) for event in replay.events)
        room = MAX_OUTBOX - CONTROL_ROOM - len(items)
        if len(replay.events) <= room and queued + size <= self.jc.hub.options.max_replay_bytes:
            return replay
        resets = self.jc.hub.stats.resets
        resets[Gap.TOO_FAR_BEHIND] = resets.get(Gap.TOO_FAR_BEHIND, 0) + 1
        return Replay([], replay.head, Gap.TOO_FAR_BEHIND)

    def _unsubscribe(self, topics: Any) -> None:
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise InvalidInput("'topics' must be a list of topic patterns")
        for text in topics:
            subscription = self.feed.remove(text)
            if subscription is not None:
                subscription.close(CloseReason.CLIENT)
                self.jc.hub.unsubscribe(subscription)
        self._release_if_idle()
        self._queue_json({"op": "unsubscribed", "topics": topics})

    def _release_if_idle(self) -> None:
        """A socket without subscriptions no longer counts as a stream (W1)."""
        if self._holding is not None and not self.subscriptions:
            self.jc.hub.release_stream(self._holding)
            self._holding = None

    def _queue_json(self, value: dict[str, Any]) -> None:
        self._queue(orjson.dumps(value).decode())

    def _queue(self, item: str | Event) -> None:
        self.feed.queue(item)  # W2


class EventSocketFraming:
    """The feed as WebSocket messages (``writer.Framing``; a chunk is a list of them)."""

    __slots__ = ("_recent", "_recent_set", "feed", "final")

    def __init__(self, feed: SocketFeed) -> None:
        self.feed = feed
        self.final: Callable[[str | Event], bool] | None = None  # a socket has no last event
        self._recent: collections.deque[int] = collections.deque(maxlen=4096)
        self._recent_set: set[int] = set()

    def opening(self) -> tuple[list[str], bool]:
        return [], False

    def frames(self, items: list[str | Event]) -> list[str]:
        messages: list[str] = []
        recent, recent_set = self._recent, self._recent_set
        for item in items:
            if isinstance(item, str):
                messages.append(item)
                continue
            position = item.position
            if position in recent_set:
                continue  # matched by two overlapping patterns (W1)
            if len(recent) == recent.maxlen:
                recent_set.discard(recent[0])
            recent.append(position)
            recent_set.add(position)
            messages.append(item.ws_message.decode())
        return messages

    def heartbeat(self) -> list[str]:
        return [PING]

    def closing(self, reason: CloseReason) -> list[str]:
        ending = self.feed.ending
        if ending is not None and ending[0] is reason:  # W4: every refusal says why first
            return [] if ending[3] is None else [error_message(ending[3])]
        if reason is CloseReason.DRAIN:
            return [error_message("the server is shutting down; reconnect and subscribe again")]
        return [error_message(f"stream closed: {reason.value}; subscribe again")]
