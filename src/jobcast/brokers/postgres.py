"""The PostgreSQL broker: history in a table, delivery by LISTEN/NOTIFY, shared by instances.

Decisions (cited as G1..G7):

G1. Order: a publish is one statement that adds to the counter row (``broker.position``) and
    inserts its events with the positions that gives. The row's lock is held until the
    commit, so positions are in commit order with no holes: once position p is visible, every
    position below it is visible too (or was dropped by retention).
G2. Delivery: the publishing statement also sends ``pg_notify`` with its newest position (a
    position, never a payload, so the 8 KB limit never matters). Each instance LISTENs on one
    connection of its own and reads the rows above the last position it delivered, in order.
    Its replay ``head`` is that position (hub.H2). Events this instance committed itself are
    delivered from memory when nothing is between them and what it delivered (one instance
    never reads its own events back). ``publish`` returns once this instance delivered its
    events; a replay of an id it has not delivered yet waits briefly for it.
G3. Group commit, as in SQLite (B5): concurrent publishes queue; one writer sends one
    statement per commit of about ``COMMIT_EVENTS`` events (whole publishes), one round trip.
    Its callers are answered in the loop turn that delivers the commit, not turns later:
    under a burst each turn writes to every stream, and a publisher kept waiting a turn
    makes the next turn's batch smaller (more writes per stream for the same events).
G4. Retention as in SQLite (B2): the per-topic cap and the age limit record what they drop
    (``trimmed``, and the ``expired`` watermark for topics gone whole) in the transaction
    that drops it; a replay reads the events before the marks, so a trim between the two
    reads is seen (``trimmed``), never a silent gap. Any instance may run the age pass (an
    advisory lock keeps it to one at a time); each caps the topics it published to. Rows
    trimmed before this instance delivered them are a gap in its live stream: it ends its
    streams with a retry hint, so clients resume and are told ``trimmed``.
G5. A replay reads at most ``max_bytes`` of event data (a running total in the query stops
    the rows at the budget), so a resume costs bounded memory.
G6. Transactional publishing (``publish_in``): an application's transaction inserts into the
    ``outbox`` table and notifies; the event exists iff that transaction commits. Instances
    move committed outbox rows into the history (one mover at a time, oldest first) on the
    notification, at start and on every maintenance tick, so a crash between the commit and
    the move delays the event, never loses it. Subscribers see it once moved, in the order
    the moves found the commits.
The in-order delivery is ``_postgres_delivery.py``, retention and the outbox mover
``_postgres_upkeep.py``, the statements ``_postgres_sql.py``.

G7. Foreign errors stop here: asyncpg and socket errors become :class:`Unavailable` (503);
    nothing is acknowledged unless committed. A lost LISTEN connection is reopened with
    backoff and the instance reads what it missed; streams stay open meanwhile. A changed
    epoch (the tables were recreated) is a lost history: streams end and resume with
    ``history_lost``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from jobcast.brokers import _postgres_upkeep as upkeep
from jobcast.brokers._postgres_delivery import InOrder
from jobcast.brokers._postgres_sql import Statements, parse_url
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.brokers.postgres_outbox import write_outbox
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

logger = logging.getLogger("jobcast.brokers.postgres")

COMMIT_EVENTS = 256  # G3
#: G7: a statement a silent database never answers fails (503) instead of hanging its caller.
COMMAND_TIMEOUT = 15.0
_CATCH_UP_SECONDS = 2.0  # G2
#: What a failed PostgreSQL call raises (G7).
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(slots=True)
class _Commit:
    """Whole publishes committed together (G3), and each one's caller waiting for the events.

    Every caller has a future of its own, so a caller that is cancelled (its client left)
    cancels only its own wait, never the others' (the role ``asyncio.shield`` would play,
    without the extra loop turn it takes to answer)."""

    drafts: list[EventDraft]
    waiting: list[asyncio.Future[list[Event]]]

    def settle(self, events: list[Event]) -> None:
        for caller in self.waiting:
            if not caller.done():
                caller.set_result(events)

    def fail(self, exc: Exception) -> None:
        for caller in self.waiting:
            if not caller.done():
                caller.set_exception(exc)


class PostgresBroker:
    shared = True  # instances publish into one history

    def __init__(self, url: str, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.location = parse_url(url)
        self.sql = Statements(self.location)
        self.retention = retention
        self.epoch = ""
        self._trim_interval = trim_interval
        self._pool: Any = None  # asyncpg.Pool
        self._listener: Any = None  # asyncpg.Connection, LISTENing
        self._history_lost: Callable[[], None] | None = None
        self._newest = 0  # the table's newest position, when last read
        #: Set by ``start``; a publish-only process (a publisher) has none.
        self._order: InOrder | None = None
        self._queue: collections.deque[_Commit] = collections.deque()
        self._wake_writer = asyncio.Event()
        self._wake_mover = asyncio.Event()
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def head(self) -> EventId:
        return EventId(self.epoch, self._order.delivered if self._order else self._newest)

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool and create (or join) the history, without listening."""
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.location.dsn,
                min_size=1,
                max_size=self.location.pool_size,
                server_settings=self._settings(),
                command_timeout=COMMAND_TIMEOUT,
            )
            self._newest = await self._create()
        except FAILURES as exc:
            await self._close_pool()
            raise Unavailable(f"cannot reach the PostgreSQL event broker: {exc}") from exc

    def _settings(self) -> dict[str, str] | None:
        return {"search_path": self.location.schema} if self.location.schema else None

    async def _create(self) -> int:
        """Create what is missing, read the epoch; the newest position in the table."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.sql.schema_lock)
            if self.location.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.location.schema}"')
            await conn.execute(self.sql.create)
            await conn.execute(self.sql.adopt, new_epoch())
            row = await conn.fetchrow(self.sql.state)
        self.epoch = row["epoch"]
        return int(row["position"])

    async def start(self, deliver: Deliver, history_lost: Callable[[], None] | None = None) -> None:
        await self.connect()
        self._history_lost = history_lost
        self._order = InOrder(deliver, self._fetch, self._skipped)
        self._order.delivered = self._order.known = self._newest  # earlier: by replay
        try:
            await self._listen()
        except FAILURES as exc:
            await self._close_pool()
            raise Unavailable(f"cannot listen on the PostgreSQL event broker: {exc}") from exc
        self._wake_mover.set()  # G6: what a crash left in the outbox
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="jobcast-pg-write"),
            asyncio.create_task(self._read_forever(self._order), name="jobcast-pg-read"),
            asyncio.create_task(self._move_forever(), name="jobcast-pg-move"),
            asyncio.create_task(self._maintain_forever(), name="jobcast-pg-maintain"),
        ]

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.location.dsn, server_settings=self._settings())
        await conn.add_listener(self.sql.channel, self._notified)
        await conn.add_listener(self.sql.outbox_channel, self._outbox_notified)
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn
        await self._refresh()  # what was committed before we listened

    async def close(self) -> None:
        """Commit everything queued, then close (as SQLite's B1)."""
        self._closing = True
        self._wake_writer.set()
        for task in self._tasks[1:]:
            task.cancel()
        for task in reversed(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        self._fail_queued("the event history is closed")
        if self._order is not None:  # committed: acknowledged even if not delivered here
            self._order.release()
        if self._listener is not None:
            with contextlib.suppress(*FAILURES):
                await self._listener.close(timeout=2)
            self._listener = None
        await self._close_pool()

    async def _close_pool(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(*FAILURES, TimeoutError):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None

    def _fail_queued(self, reason: str) -> None:
        queued, self._queue = self._queue, collections.deque()
        for commit in queued:
            commit.fail(Unavailable(reason))

    # -- publishing (G1, G3) -------------------------------------------------------------------

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event] | None:
        """Never at once: every publish is a round trip to PostgreSQL."""
        return None

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._closing:
            raise Unavailable("the event history is closed")
        await self.connect()
        queue = self._queue
        if not queue or len(queue[-1].drafts) >= COMMIT_EVENTS or self._order is None:
            queue.append(_Commit([], []))
        commit = queue[-1]
        start = len(commit.drafts)
        commit.drafts.extend(drafts)
        mine: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        commit.waiting.append(mine)
        if self._order is None:  # publish-only (no writer task): commit it ourselves
            queue.pop()
            try:
                await self._commit(commit)
            finally:  # a caller cancelled mid-commit no longer awaits its outcome
                if mine.done() and not mine.cancelled():
                    mine.exception()
        else:
            self._wake_writer.set()
        events = await mine
        return events[start : start + len(drafts)]

    async def _write_forever(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._queue:
                await self._commit(self._queue.popleft())
            if self._closing and not self._queue:
                return

    async def _commit(self, commit: _Commit) -> None:
        try:
            events = await self._insert(commit.drafts)
        except Unavailable as exc:
            commit.fail(exc)
            return
        except BaseException:  # whatever stops the writer, nobody waits forever
            commit.fail(Unavailable("the event history stopped while storing events"))
            raise
        self._touched.update(d.topic for d in commit.drafts)
        self._newest = max(self._newest, events[-1].position)
        order = self._order
        if order is None:
            commit.settle(events)
            return
        order.committed_here(events)
        # Acknowledged once delivered here (read-your-writes: G2). Mostly that is at once, and
        # the callers are answered in this turn of the loop: under a burst every turn is long
        # (it writes to every stream), so each turn a publisher waits is a smaller batch.
        order.on_delivered(events[-1].position, lambda: commit.settle(events))

    async def _insert(self, drafts: list[EventDraft]) -> list[Event]:
        now = time.time()
        for attempt in range(2):
            try:
                newest = await self._pool.fetchval(
                    self.sql.publish,
                    self.epoch,
                    [d.topic for d in drafts],
                    [d.type for d in drafts],
                    [d.data_json for d in drafts],
                    now,
                    self.sql.channel,
                )
            except asyncpg.UndefinedTableError:  # G7: the tables were dropped
                newest = None
            except FAILURES as exc:
                raise Unavailable(f"the PostgreSQL event broker is unavailable: {exc}") from exc
            if newest is None:  # another epoch (G7): adopt it, then publish into it
                if attempt:
                    raise Unavailable("the PostgreSQL event history changed while publishing")
                try:
                    await self._adopt_changed_epoch()
                except FAILURES as exc:
                    raise Unavailable(f"the PostgreSQL event broker failed: {exc}") from exc
                continue
            first = newest - len(drafts) + 1
            return [
                Event(self.epoch, first + i, d.topic, d.type, d.data_json, now)
                for i, d in enumerate(drafts)
            ]
        raise AssertionError("unreachable")

    # -- delivery (G2, G7) ---------------------------------------------------------------------

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            if self._order is not None:
                self._order.announce(int(payload))

    def _outbox_notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._wake_mover.set()

    async def _fetch(self, after: int, upto: int, limit: int) -> list[Event]:
        rows = await self._pool.fetch(self.sql.read_live, after, upto, limit)
        return [self._event(r) for r in rows]

    def _event(self, row: Any) -> Event:
        return Event(self.epoch, row["position"], row["topic"], row["type"], row["data"], row["ts"])

    def _skipped(self) -> None:
        """G4: rows trimmed before this instance delivered them: its streams cannot continue
        without a silent gap, so they end and their clients resume (and hear ``trimmed``)."""
        if self._history_lost is not None:
            self._history_lost()

    async def _read_forever(self, order: InOrder) -> None:
        backoff = 0.05
        while True:
            await order.wake.wait()
            order.wake.clear()
            try:
                await order.read()
                backoff = 0.05
            except FAILURES as exc:  # G7: retried; streams stay open
                logger.warning("PostgreSQL read failed (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                order.wake.set()

    def _listener_lost(self, conn: object) -> None:
        if not self._closing:
            self._tasks.append(asyncio.create_task(self._relisten(), name="jobcast-pg-relisten"))

    async def _relisten(self) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                await self._listen()
                self._wake_mover.set()
                return
            except FAILURES as exc:
                logger.warning("PostgreSQL LISTEN lost (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _refresh(self) -> None:
        """Read the counter row: catch up on what no notification announced, and notice a
        changed epoch (G7)."""
        try:
            row = await self._pool.fetchrow(self.sql.state)
        except asyncpg.UndefinedTableError:
            row = None
        if row is None or row["epoch"] != self.epoch:
            await self._adopt_changed_epoch()
            return
        self._newest = max(self._newest, row["position"])
        if self._order is not None:
            self._order.announce(row["position"])

    async def _adopt_changed_epoch(self) -> None:
        old = self.epoch
        self._newest = await self._create()  # recreates missing tables, reads the epoch
        if self.epoch == old:
            return
        logger.warning("the PostgreSQL event history was lost; new epoch %s", self.epoch)
        if self._order is not None:
            self._order.reset(self._newest)
        if self._history_lost is not None:
            self._history_lost()

    # -- replay (G4, G5) -----------------------------------------------------------------------

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        try:
            await self.connect()
            if after.epoch == self.epoch and after.position > self.head.position:
                # published (on another instance), or an id from nowhere?
                self._newest = max(self._newest, await self._pool.fetchval(self.sql.newest) or 0)
                if self._order is not None and after.position <= self._newest:
                    await self._order.catch_up(after.position, _CATCH_UP_SECONDS)
            head = self.head
            gap = check_position(self.epoch, head.position, after)
            if gap is not None:
                return Replay([], head, gap)
            events_sql, marks_sql, params = self.sql.replay(patterns, 4)
            budget = float(max_bytes) if max_bytes is not None else 1e300
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    events_sql, after.position, head.position, limit + 1, *params, budget
                )
                trimmed = await conn.fetchval(marks_sql, *params)  # G4: after the events
        except FAILURES as exc:
            raise Unavailable(f"could not read the PostgreSQL event history: {exc}") from exc
        if int(trimmed or 0) > after.position:
            return Replay([], head, Gap.TRIMMED)
        if len(rows) > limit or (rows and rows[-1]["total"] > budget):
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        return Replay([self._event(r) for r in rows], head)

    # -- retention and the outbox (G4, G6) -------------------------------------------------------

    async def trim(self) -> None:
        """Apply retention: this instance's topics' caps, and the age limit for everyone."""
        touched, self._touched = self._touched, set()
        await upkeep.trim_topics(self._pool, self.sql, touched, self.retention.max_events_per_topic)
        if self.retention.max_age_seconds > 0:
            await upkeep.trim_age(
                self._pool, self.sql, time.time() - self.retention.max_age_seconds
            )

    async def publish_in(self, connection: Any, drafts: Sequence[EventDraft]) -> None:
        """Publish ``drafts`` in ``connection``'s transaction: they exist iff it commits (G6).
        The driver's errors are the application's, as for its own statements."""
        await write_outbox(connection, self.sql, drafts)

    async def move_outbox(self) -> int:
        """Move committed outbox rows into the history (G6); the number moved."""
        moved, newest = await upkeep.move_outbox(self._pool, self.sql)
        if moved and self._order is not None:
            self._order.announce(newest)
        return moved

    async def _move_forever(self) -> None:
        while True:
            await self._wake_mover.wait()
            self._wake_mover.clear()
            try:
                await self.move_outbox()
            except FAILURES as exc:  # retried on the next notification or tick
                logger.warning("moving the PostgreSQL outbox failed: %s", exc)

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            try:
                await self._refresh()
                self._wake_mover.set()
                await self.trim()
            except FAILURES as exc:  # retried on the next tick; publishing is unaffected
                logger.warning("PostgreSQL retention failed: %s", exc)
