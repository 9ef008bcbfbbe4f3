"""The hub: local fan-out from the broker to this process's subscribers.

Data flow: ``publish`` -> broker (assigns ids, stores history, delivers to every instance) ->
``_deliver`` -> topic index -> ``Subscription.offer`` -> the connection's writer -> the wire.

Decisions (cited in the code as H1..H7):

H1. A topic index, not a scan: exact topics map to their subscribers, and each wildcard prefix
    to its subscribers; an event costs one lookup per segment of its topic, whatever the total
    number of subscribers.
H2. Replay, then live, with no gap and no duplicate: a subscription is registered before the
    history is read, so everything committed after the read arrives live; the history answer
    carries the head position it covers, and live events up to that head are skipped. A
    subscription that resumes nothing notes the broker's head when it is registered
    (``opened_at``): every later event reaches it, so a client may resume from that id even
    if its stream ends before the first event.
H3. One timer for the whole hub, not one per connection: it sends heartbeats (see
    subscription.S4) and ends streams whose credential expired (``reauth``).
H4. Draining (shutdown) ends every stream with a ``retry`` hint spread over a window, so the
    clients of a stopping instance do not reconnect to the next one all at the same moment.
H5. Links are given when the hub starts, not assigned from outside: it hands the broker its
    ``deliver`` and history-lost callbacks, and takes its observer (the job access rules,
    ``jobs/access.py``) as an argument of its own ``start``. The observer sees every batch
    before the per-topic filters do; control topics (``$jobcast/...``) go to it alone, never
    fanned out or replayed.
H6. A write that does not complete (the client stopped reading and the socket buffers are
    full) is found by the same ticker: each stream notes when its current write began, and
    the ticker ends writes older than ``send_timeout``, also for streams already closed (an
    evicted one may still be blocked in its last write). No timer per write: arming and
    cancelling one cost more than the write itself.
H7. A stream time limit (``max_stream_seconds``, for hosts that cut long responses) is a
    deadline, never exceeded: the ticker ends a stream at its last tick before the deadline.
    Each stream's deadline is drawn from the last tenth of the limit, so clients that connected
    together (after a deploy) do not all come back together, limit after limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from jobcast.brokers.base import Broker, Deliver, Gap, Replay
from jobcast.errors import RateLimited, Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import CONTROL_PREFIX, TopicPattern, wildcard_prefixes

if TYPE_CHECKING:
    from jobcast.tracing import Tracing

#: Stream deadlines are drawn from the last tenth of ``max_stream_seconds`` (H7).
TIME_LIMIT_SPREAD = 0.1


@dataclass(slots=True)
class HubStats:
    """Counters since start; exported as metrics."""

    published: int = 0
    delivered: int = 0
    conflated: int = 0
    evicted: int = 0
    replays: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    #: Pending events discarded when a subscription ended, by its close reason.
    dropped: dict[str, int] = field(default_factory=dict)
    #: ``Unavailable`` raised by the broker, by operation ("publish", "replay").
    broker_errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HubOptions:
    heartbeat_interval: float = 15.0
    #: Events a subscriber may have pending before it is evicted (subscription.S3).
    max_pending: int = 1000
    conflate_types: frozenset[str] = frozenset({"progress"})
    #: The most events one replay may send; a client further behind gets a reset.
    max_replay: int = 10_000
    #: The most event data (bytes) one replay may load; beyond it, a reset (too_far_behind).
    max_replay_bytes: int = 4 * 1024 * 1024
    #: End every stream within this many seconds (for hosts that cut long responses); 0: never.
    max_stream_seconds: float = 0.0
    #: Concurrent subscriptions allowed per owner (429 beyond) and in all (503 beyond).
    max_per_owner: int = 100
    max_total: int = 50_000
    #: A write to a stream that has not completed after this many seconds ends it (H6).
    send_timeout: float = 30.0
    #: Drain: clients are told to reconnect after a random delay in this window (ms).
    drain_retry_ms: tuple[int, int] = (500, 5000)
    #: OpenTelemetry spans for publishes and stream opens (``tracing.py``; the otel extra).
    tracing: bool = False


class Observer(Protocol):
    """Sees events before the per-topic filters do (jobs/access.py keeps job access current)."""

    def delivered(self, events: Sequence[Event]) -> None:
        """Every delivered batch, control events included, before it is fanned out."""

    async def replaying(self, events: Sequence[Event]) -> None:
        """A replay about to be filtered for a subscription that has a per-topic filter."""


class Hub:
    def __init__(self, broker: Broker, options: HubOptions | None = None) -> None:
        self.broker = broker
        self.options = options or HubOptions()
        self.stats = HubStats()
        self.draining = False
        #: Set once draining starts: wakes connections that hold no subscription to close.
        self.drained = asyncio.Event()
        self._exact: dict[str, set[Subscription]] = {}
        self._prefixes: dict[str, set[Subscription]] = {}
        self._subscriptions: set[Subscription] = set()
        #: Closed subscriptions whose connection is still in a write (H6).
        self._closed_writing: set[Subscription] = set()
        self._per_owner: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None
        #: Given by ``start``: sees every delivered batch before the per-topic filters.
        self.observer: Observer | None = None
        #: The flusher of this hub's live jobs (``jobs/flusher.py``, F1), made by that layer on
        #: first use: one per hub, held here rather than in module state.
        self.job_flusher: object | None = None
        self.tracing: Tracing | None = None
        if self.options.tracing:  # tracing.O1: imported only when on
            from jobcast.tracing import Tracing

            self.tracing = Tracing()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, observer: Observer | None = None) -> None:
        """Start delivering: the broker hands its batches to this hub (and tells it when a
        shared history was lost, so streams end and resume, X4); ``observer`` sees them
        first (``jobs/access.py``)."""
        self.observer = observer
        deliver: Deliver = self._deliver
        if self.tracing is not None:  # tracing.O1: the fan-out loop itself has no hook
            deliver = self.tracing.delivering(deliver, self.stats)
        await self.broker.start(deliver, self.end_streams)
        self._ticker = asyncio.create_task(self._heartbeat_forever())

    async def close(self) -> None:
        self.drain()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.broker.close()

    def drain(self) -> None:
        """Refuse new subscriptions and end every stream with a spread-out retry (H4)."""
        self.draining = True
        self.drained.set()
        for subscription in list(self._subscriptions):
            subscription.close(CloseReason.DRAIN)
            self.unsubscribe(subscription)

    def end_streams(self) -> None:
        """End every stream with a spread-out retry, still accepting new ones.

        A shared broker calls this when its history was lost: live events of the new history
        must not follow ids of the old one on the same stream, so each client reconnects with
        its last id and is told ``history_lost`` in-band.
        """
        for subscription in list(self._subscriptions):
            subscription.close(CloseReason.DRAIN)
            self.unsubscribe(subscription)

    def drain_retry_ms(self) -> int:
        low, high = self.options.drain_retry_ms
        return random.randint(low, high)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def subscriptions(self) -> list[Subscription]:
        """The open subscriptions, as a list (for metrics: walked only when scraped)."""
        return list(self._subscriptions)

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, type: str, data: Any = None) -> Event:
        """Publish one event and return it with its id, once it is stored and delivered."""
        (event,) = await self.publish_many([EventDraft.create(topic, type, data)])
        return event

    async def publish_many(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if not drafts:
            return []
        try:
            if self.tracing is not None:  # tracing.O1
                return await self.tracing.publish(drafts, self.broker.publish)
            return await self.broker.publish(drafts)
        except Unavailable:
            self._count_broker_error("publish")
            raise

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event] | None:
        """``publish_many`` without waiting, when the broker can (``Broker.publish_now``);
        ``None``, with nothing done, when it cannot or a trace must be recorded."""
        if not drafts or self.tracing is not None:
            return None
        try:
            return self.broker.publish_now(drafts)
        except Unavailable:
            self._count_broker_error("publish")
            raise

    def _count_broker_error(self, operation: str) -> None:
        errors = self.stats.broker_errors
        errors[operation] = errors.get(operation, 0) + 1

    def _deliver(self, events: list[Event]) -> None:
        exact, prefixes, stats = self._exact, self._prefixes, self.stats
        evicted: list[Subscription] = []
        stats.published += len(events)
        if self.observer is not None:
            self.observer.delivered(events)
        for event in events:
            targets: Collection[Subscription] | None = exact.get(event.topic)  # H1
            if prefixes:
                for prefix in wildcard_prefixes(event.topic):
                    more = prefixes.get(prefix)
                    if more:
                        targets = more if not targets else set(targets).union(more)
            if not targets:
                continue
            topic = event.topic
            if topic.startswith(CONTROL_PREFIX):  # for the observer only; "*" would match it
                continue
            for subscription in targets:
                if subscription.allow is not None and not subscription.allows(topic):
                    continue
                outcome = subscription.offer(event)
                if outcome < 0:
                    evicted.append(subscription)
                else:
                    stats.delivered += 1
                    stats.conflated += outcome
        for subscription in evicted:
            stats.evicted += 1
            self.unsubscribe(subscription)

    # -- subscribing -----------------------------------------------------------------------

    async def subscribe(
        self,
        patterns: tuple[TopicPattern, ...],
        *,
        last_event_id: str | None = None,
        allow: Callable[[str], bool] | None = None,
        owner: str | None = None,
        expires_at: float | None = None,
        transport: str = "sse",
    ) -> tuple[Subscription, Replay | None]:
        """Register a subscription and, when resuming, the replay that precedes live events.

        ``owner`` counts against the per-owner cap; at ``expires_at`` (epoch seconds, the
        credential's expiry) the subscription is closed as expired so the client re-authenticates.
        ``transport`` ("sse" or "websocket") only labels it in the metrics.
        """
        if self.tracing is None:  # tracing.O1
            return await self._open(patterns, last_event_id, allow, owner, expires_at, transport)
        with self.tracing.stream_open(patterns, transport, last_event_id) as replayed:
            opened = await self._open(patterns, last_event_id, allow, owner, expires_at, transport)
            replayed(opened[1])
            return opened

    async def _open(
        self,
        patterns: tuple[TopicPattern, ...],
        last_event_id: str | None,
        allow: Callable[[str], bool] | None,
        owner: str | None,
        expires_at: float | None,
        transport: str,
    ) -> tuple[Subscription, Replay | None]:
        if self.draining:
            raise Unavailable("the server is shutting down; reconnect to another instance")
        options = self.options
        if len(self._subscriptions) >= options.max_total:
            raise Unavailable("this server has reached its stream limit; retry later")
        if owner is not None:
            self._check_owner_cap(owner)
        subscription = Subscription(
            patterns,
            max_pending=options.max_pending,
            conflate_types=options.conflate_types,
            allow=allow,
            owner=owner,
            expires_at=expires_at,
            transport=transport,
        )
        if options.max_stream_seconds:  # H7
            spread = random.uniform(0.0, TIME_LIMIT_SPREAD) * options.max_stream_seconds
            subscription.ends_at = time.time() + options.max_stream_seconds - spread
        self._register(subscription)  # before reading history (H2)
        if last_event_id is None:
            subscription.opened_at = self.broker.head  # H2: nothing awaited since registering
            return subscription, None
        try:
            replay = await self._replay(subscription, last_event_id)
        except BaseException:
            self.unsubscribe(subscription)
            raise
        subscription.skip_through = replay.head.position
        return subscription, replay

    async def _replay(self, subscription: Subscription, last_event_id: str) -> Replay:
        self.stats.replays += 1
        after = EventId.parse(last_event_id)
        try:
            replay = await self.broker.replay(
                subscription.patterns,
                after or EventId(self.broker.epoch, 0),
                self.options.max_replay,
                self.options.max_replay_bytes,
            )
        except Unavailable:
            self._count_broker_error("replay")
            raise
        if after is None:
            replay = Replay([], replay.head, Gap.UNKNOWN_ID)
        if replay.gap is not None:
            self.stats.resets[replay.gap] = self.stats.resets.get(replay.gap, 0) + 1
        elif subscription.allow is not None:
            if self.observer is not None:
                await self.observer.replaying(replay.events)
            events = [e for e in replay.events if subscription.allows(e.topic)]
            replay = Replay(events, replay.head)
        if any(p.prefix == "" for p in subscription.patterns):  # only "*" matches control topics
            events = [e for e in replay.events if not e.topic.startswith(CONTROL_PREFIX)]
            replay = Replay(events, replay.head, replay.gap)
        return replay

    def hold_stream(self, owner: str) -> None:
        """Count one stream of ``owner`` that holds its subscriptions without ``owner``: a
        WebSocket with several topics is one stream against the per-owner cap, not one per
        topic. Raises :class:`RateLimited` at the cap; :meth:`release_stream` ends it."""
        self._check_owner_cap(owner)
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1

    def release_stream(self, owner: str) -> None:
        remaining = self._per_owner.get(owner, 0) - 1
        if remaining > 0:
            self._per_owner[owner] = remaining
        else:
            self._per_owner.pop(owner, None)

    def _check_owner_cap(self, owner: str) -> None:
        cap = self.options.max_per_owner
        if self._per_owner.get(owner, 0) >= cap:
            raise RateLimited(f"at most {cap} concurrent streams per subject", retry_after=5)

    def _register(self, subscription: Subscription) -> None:
        self._subscriptions.add(subscription)
        if subscription.owner is not None:
            self._per_owner[subscription.owner] = self._per_owner.get(subscription.owner, 0) + 1
        for pattern in subscription.patterns:
            if pattern.prefix is None:
                self._exact.setdefault(pattern.text, set()).add(subscription)
            else:
                self._prefixes.setdefault(pattern.prefix, set()).add(subscription)

    def forget_access(self) -> None:
        """Drop every cached per-topic authorisation answer (after a grant changed)."""
        for subscription in self._subscriptions:
            subscription.forget_access()

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription not in self._subscriptions:
            self._closed_writing.discard(subscription)  # its writer has finished
            return
        self._subscriptions.discard(subscription)
        # Counted here, once per subscription: a stream that ends without a close reason
        # (its writer finished first) leaves behind what it had pending, as a client would.
        reason = subscription.close_reason
        dropped = subscription.pending_count if reason is None else subscription.discarded
        if dropped:
            key = CloseReason.CLIENT.value if reason is None else reason.value
            self.stats.dropped[key] = self.stats.dropped.get(key, 0) + dropped
        if subscription.writing_since:
            self._closed_writing.add(subscription)  # H6
        if subscription.owner is not None:
            self.release_stream(subscription.owner)
        for pattern in subscription.patterns:
            index = self._exact if pattern.prefix is None else self._prefixes
            key = pattern.text if pattern.prefix is None else pattern.prefix
            members = index.get(key)
            if members is not None:
                members.discard(subscription)
                if not members:
                    del index[key]

    # -- heartbeats ------------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        interval = self.options.heartbeat_interval
        tick = min(1.0, interval / 4)
        if self.options.max_stream_seconds:
            tick = min(tick, self.options.max_stream_seconds / 4)
        while True:
            await asyncio.sleep(tick)
            monotonic = time.monotonic()
            quiet_since = monotonic - interval
            stuck_since = monotonic - self.options.send_timeout
            now = time.time()
            last_tick_before = now + tick  # H7: end at the last tick before the deadline
            ending: list[tuple[Subscription, CloseReason]] = []
            for subscription in [*self._subscriptions, *self._closed_writing]:
                if 0 < subscription.writing_since <= stuck_since:  # H6
                    subscription.abort_write()
                    self.unsubscribe(subscription)
                elif subscription.close_reason is not None:
                    continue
                elif subscription.expires_at is not None and subscription.expires_at <= now:
                    ending.append((subscription, CloseReason.EXPIRED))  # renew, then resume
                elif subscription.ends_at is not None and subscription.ends_at <= last_tick_before:
                    ending.append((subscription, CloseReason.TIME_LIMIT))  # just resume
                elif subscription.last_write <= quiet_since:
                    subscription.request_heartbeat()
            for subscription, reason in ending:
                subscription.close(reason)
                self.unsubscribe(subscription)
