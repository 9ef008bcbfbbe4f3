"""One subscriber's bounded buffer between the hub and its connection.

Decisions (cited in the code as S1..S5):

S1. The publisher never waits for a subscriber. ``offer`` appends to a list and, if the writer
    is asleep, wakes it; it never awaits. The writer takes everything pending in one go and
    writes it as one chunk, so a burst costs one wake-up and one ``send`` per subscriber.
S2. Conflation: an event whose type is conflatable (``progress`` by default) replaces a pending,
    not yet written event of the same type on the same topic. Only a subscriber that is behind
    has something pending, so fast subscribers see every update and slow ones see the latest.
    The replaced slot is blanked and the new event appended, keeping ids strictly increasing.
S3. Every other event is kept. A subscriber whose buffer passes its limit is evicted: its
    buffer is dropped, and its connection ends with a ``retry`` hint; the client reconnects
    with ``Last-Event-ID`` and replay fills the gap from history. Nothing is dropped silently.
S4. Heartbeats are requested by the hub's ticker (one timer for all subscribers) and written
    only when the connection has been quiet for a whole interval, so real traffic resets them.
S5. An idle subscription holds only what it uses: the per-topic access answers and the index
    of conflatable pending events are made by the first topic asked and the first
    conflatable event, not for every stream (most never need one, and ten thousand idle
    streams held 1.3 MB of empty dicts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from enum import StrEnum
from typing import Protocol

from jobcast.events import Event, EventId
from jobcast.topics import TopicPattern


class CloseReason(StrEnum):
    """Why a subscription ended, as reported to the connection that carried it."""

    CLIENT = "client"  # the client went away or unsubscribed
    SLOW = "slow_consumer"  # evicted: too far behind (S3)
    DRAIN = "draining"  # the server is shutting down or draining
    EXPIRED = "expired"  # the credential ran out: the client must re-authenticate
    TIME_LIMIT = "time_limit"  # the stream reached JOBCAST_MAX_STREAM_SECONDS: just reconnect
    STUCK = "stuck"  # a write did not complete within send_timeout (hub.H6)


class Writer(Protocol):
    """What writes a subscription to its connection: a task, or a connection's own writer."""

    def cancel(self) -> object: ...


class Subscription:
    """A bounded, conflating event buffer with a single waiting reader."""

    __slots__ = (
        "_allowed",
        "_conflatable",
        "_loop",
        "_waiter",
        "allow",
        "close_reason",
        "conflate_types",
        "discarded",
        "ends_at",
        "expires_at",
        "heartbeat_due",
        "last_write",
        "max_pending",
        "opened_at",
        "owner",
        "patterns",
        "pending",
        "pending_count",
        "skip_through",
        "transport",
        "write_aborted",
        "writer",
        "writing_since",
    )

    def __init__(
        self,
        patterns: tuple[TopicPattern, ...],
        *,
        max_pending: int,
        conflate_types: Collection[str] = (),
        allow: Callable[[str], bool] | None = None,
        owner: str | None = None,
        expires_at: float | None = None,
        transport: str = "sse",
    ) -> None:
        self.patterns = patterns
        #: "sse" or "websocket": only read when metrics are scraped.
        self.transport = transport
        #: Whose stream this is (for per-subject caps), and when its credential expires.
        self.owner = owner
        self.expires_at = expires_at
        #: When the stream must end anyway (hosts that cut long responses), in epoch seconds.
        self.ends_at: float | None = None
        self.max_pending = max_pending
        self.conflate_types = conflate_types
        #: Per-topic authorisation, asked once per topic (wildcards see new topics too).
        self.allow = allow
        self._allowed: dict[str, bool] | None = None  # S5
        self.pending: list[Event | None] = []
        self.pending_count = 0
        self._conflatable: dict[tuple[str, str], int] | None = None  # S5
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self.close_reason: CloseReason | None = None
        #: Pending events that ``close`` threw away (counted as dropped, by close reason).
        self.discarded = 0
        self.heartbeat_due = False
        self.last_write = time.monotonic()
        #: After a replay, live events up to this position are duplicates (hub.H2).
        self.skip_through = 0
        #: Without a replay: the newest event id when it was registered (hub.H2).
        self.opened_at: EventId | None = None
        #: What writes this subscription to its connection, and when (monotonic) its current
        #: write began, 0 when it is not writing: how the hub finds stuck writes (H6).
        self.writer: Writer | None = None
        self.writing_since = 0.0
        self.write_aborted = False

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def allows(self, topic: str) -> bool:
        if self.allow is None:
            return True
        answers = self._allowed
        if answers is None:
            answers = self._allowed = {}  # S5
        allowed = answers.get(topic)
        if allowed is None:
            if len(answers) >= 4096:
                answers.clear()  # bound the cache; answers are cheap to recompute
            allowed = answers[topic] = self.allow(topic)
        return allowed

    def forget_access(self) -> None:
        self._allowed = None

    def offer(self, event: Event) -> int:
        """Queue ``event``; return how many pending events it conflated (0 or 1).

        Returns -1 when the subscription had to be evicted instead (S3).
        """
        if self.close_reason is not None:
            return 0
        conflated = 0
        key: tuple[str, str] | None = None
        conflatable = self._conflatable
        if event.type in self.conflate_types:  # S2
            key = (event.topic, event.type)
            if conflatable is None:
                conflatable = self._conflatable = {}  # S5
            index = conflatable.get(key)
            if index is not None:
                self.pending[index] = None
                self.pending_count -= 1
                conflated = 1
        if not conflated and self.pending_count >= self.max_pending:  # S3
            self.close(CloseReason.SLOW)
            return -1
        pending = self.pending
        if key is not None and conflatable is not None:  # both or neither (S2, S5)
            if len(pending) > 2 * self.pending_count + 64:
                conflatable = self._compact()
                pending = self.pending
            conflatable[key] = len(pending)
        pending.append(event)
        self.pending_count += 1
        self._wake()
        return conflated

    def _compact(self) -> dict[tuple[str, str], int]:
        """Drop blanked slots so conflation keeps the list as bounded as the count; the new
        index of conflatable events."""
        pending: list[Event | None] = [event for event in self.pending if event is not None]
        self.pending = pending
        conflatable = self._conflatable = {
            (event.topic, event.type): index
            for index, event in enumerate(pending)
            if event is not None and event.type in self.conflate_types
        }
        return conflatable

    def request_heartbeat(self) -> None:
        self.heartbeat_due = True
        self._wake()

    def close(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.discarded = self.pending_count
        self.pending = []
        self.pending_count = 0
        self._conflatable = None
        self._wake()

    def attach(self, writer: Writer) -> None:
        """``writer`` writes this subscription to its connection from now on."""
        self.writer = writer

    def detach(self) -> None:
        """Its writer is done with it."""
        self.writer = None
        self.writing_since = 0.0

    def is_attached(self, writer: Writer) -> bool:
        return self.writer is writer

    def abort_write(self) -> None:
        """End a write that will not complete (hub.H6), whether or not it was closed already."""
        self.close(CloseReason.STUCK)
        self.write_aborted = True
        if self.writer is not None:
            self.writer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def waiter(self) -> asyncio.Future[None] | None:
        """A future that is done once there is something to write, a heartbeat is due, or the
        subscription is closed; ``None`` when that is already so. Awaiting it directly keeps
        no coroutine frame alive while a stream is idle (``wait()`` does)."""
        if self.pending_count or self.heartbeat_due or self.close_reason is not None:
            return None
        waiter = self._waiter = self._loop.create_future()
        return waiter

    async def wait(self) -> None:
        """Return once there is something to write, a heartbeat is due, or it was closed."""
        waiter = self.waiter()
        if waiter is not None:
            await waiter

    def take(self) -> list[Event]:
        """Take every pending event, oldest first (S1)."""
        pending = self.pending
        if not pending:
            return []
        self.pending = []
        self.pending_count = 0
        if self._conflatable:
            self._conflatable.clear()
        events = [event for event in pending if event is not None]
        if self.skip_through:
            skip = self.skip_through
            events = [event for event in events if event.position > skip]
            if events:
                self.skip_through = 0  # positions only grow: nothing later can be a duplicate
        return events

    def mark_written(self) -> None:
        self.heartbeat_due = False
        self.last_write = time.monotonic()
