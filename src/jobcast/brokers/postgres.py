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

from jobcast.brokers._postgres_sql import Statements, parse_url
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.brokers.postgres_outbox import write_outbox
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

logger = logging.getLogger("jobcast.brokers.postgres")

COMMIT_EVENTS = 256  # G3
READ_BATCH = 1000  # rows per live read
_CATCH_UP_SECONDS = 2.0  # G2
#: What a failed PostgreSQL call raises (G7).
FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@dataclass(slots=True)
class _Commit:
    drafts: list[EventDraft]
    done: asyncio.Future[list[Event]]


class PostgresBroker:
    shared = True  # instances publish into one history

    def __init__(self, url: str, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.location = parse_url(url)
        self.sql = Statements(self.location)
        self.retention = retention
        self.epoch = ""
        self._trim_interval = trim_interval
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._deliver: Deliver | None = None
        self._history_lost: Callable[[], None] | None = None
        self._delivered = 0  # newest position this instance delivered
        self._known = 0  # newest position known committed
        self._local: dict[int, list[Event]] = {}  # first position -> committed here (G2)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._queue: collections.deque[_Commit] = collections.deque()
        self._wake_writer = asyncio.Event()
        self._wake_reader = asyncio.Event()
        self._wake_mover = asyncio.Event()
        self._reading = False
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def head(self) -> EventId:
        return EventId(self.epoch, self._delivered)

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool and create (or join) the history, without listening."""
        if self._pool is not None:
            return
        settings = {"search_path": self.location.schema} if self.location.schema else None
        try:
            self._pool = await asyncpg.create_pool(
                self.location.dsn,
                min_size=1,
                max_size=self.location.pool_size,
                server_settings=settings,
            )
            self._known = await self._create()
        except FAILURES as exc:
            await self._close_pool()
            raise Unavailable(f"cannot reach the PostgreSQL event broker: {exc}") from exc

    async def _create(self) -> int:
        """Create what is missing, read the epoch; the newest position in the table."""
        assert self._pool is not None
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
        self._deliver, self._history_lost = deliver, history_lost
        self._delivered = self._known  # earlier events are history, reached by replay
        try:
            await self._listen()
        except FAILURES as exc:
            await self._close_pool()
            raise Unavailable(f"cannot listen on the PostgreSQL event broker: {exc}") from exc
        self._wake_mover.set()  # G6: what a crash left in the outbox
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="jobcast-pg-write"),
            asyncio.create_task(self._read_forever(), name="jobcast-pg-read"),
            asyncio.create_task(self._move_forever(), name="jobcast-pg-move"),
            asyncio.create_task(self._maintain_forever(), name="jobcast-pg-maintain"),
        ]

    async def _listen(self) -> None:
        settings = {"search_path": self.location.schema} if self.location.schema else None
        conn = await asyncpg.connect(self.location.dsn, server_settings=settings)
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
        for _, waiter in self._waiters:  # committed: acknowledged even if not delivered here
            if not waiter.done():
                waiter.set_result(None)
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
            if not commit.done.done():
                commit.done.set_exception(Unavailable(reason))

    # -- publishing (G1, G3) -------------------------------------------------------------------

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._closing:
            raise Unavailable("the event history is closed")
        if self._pool is None:
            await self.connect()
        queue = self._queue
        if not queue or len(queue[-1].drafts) >= COMMIT_EVENTS or self._deliver is None:
            queue.append(_Commit([], asyncio.get_running_loop().create_future()))
        commit = queue[-1]
        start = len(commit.drafts)
        commit.drafts.extend(drafts)
        if self._deliver is None:  # publish-only (no writer task): commit it ourselves
            queue.pop()
            await self._commit(commit)
        else:
            self._wake_writer.set()
        events = await asyncio.shield(commit.done)
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
        done = commit.done
        try:
            events = await self._insert(commit.drafts)
        except Exception as exc:
            if not done.done():
                done.set_exception(exc if isinstance(exc, Unavailable) else Unavailable(str(exc)))
            return
        except BaseException:  # whatever stops the writer, nobody waits forever
            if not done.done():
                done.set_exception(Unavailable("the event history stopped while storing events"))
            raise
        self._touched.update(d.topic for d in commit.drafts)
        if self._deliver is None:
            done.set_result(events)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((events[-1].position, waiter))
        self._committed_here(events)
        waiter.add_done_callback(lambda _: _settle(done, events))

    async def _insert(self, drafts: list[EventDraft]) -> list[Event]:
        assert self._pool is not None
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
                if attempt:
                    raise Unavailable("the PostgreSQL event history is missing") from None
                await self._adopt_changed_epoch()
                continue
            except FAILURES as exc:
                raise Unavailable(f"the PostgreSQL event broker is unavailable: {exc}") from exc
            if newest is None:  # another epoch (G7): adopt it, then publish into it
                if attempt:
                    raise Unavailable("the PostgreSQL event history changed while publishing")
                await self._adopt_changed_epoch()
                continue
            first = newest - len(drafts) + 1
            return [
                Event(self.epoch, first + i, d.topic, d.type, d.data_json, now)
                for i, d in enumerate(drafts)
            ]
        raise AssertionError("unreachable")

    # -- delivery (G2) -----------------------------------------------------------------------

    def _committed_here(self, events: list[Event]) -> None:
        first, last = events[0].position, events[-1].position
        self._known = max(self._known, last)
        if last <= self._delivered:  # the notification was faster: already read and delivered
            self._resolve_waiters()
        elif not self._reading and self._delivered == first - 1:
            self._hand_over(events)  # nothing between: no read back
        else:
            self._local[first] = events
            self._wake_reader.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            position = int(payload)
            if position > self._known:
                self._known = position
                self._wake_reader.set()

    def _outbox_notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._wake_mover.set()

    def _hand_over(self, events: list[Event]) -> None:
        events = [e for e in events if e.position > self._delivered]
        if not events:
            return
        self._delivered = events[-1].position
        if self._deliver is not None:
            self._deliver(events)
        self._resolve_waiters()

    def _resolve_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for position, waiter in waiters:
            if position <= self._delivered:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                self._waiters.append((position, waiter))

    async def _read_forever(self) -> None:
        backoff = 0.05
        while True:
            await self._wake_reader.wait()
            self._wake_reader.clear()
            try:
                await self._catch_up_from_rows()
                backoff = 0.05
            except FAILURES as exc:  # G7: retried; streams stay open
                logger.warning("PostgreSQL read failed (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._wake_reader.set()
            finally:
                self._reading = False

    async def _catch_up_from_rows(self) -> None:
        while self._delivered < self._known:
            following = self._delivered + 1
            if following in self._local:
                self._hand_over(self._local.pop(following))
                continue
            assert self._pool is not None
            self._reading = True
            rows = await self._pool.fetch(
                self.sql.read_live, self._delivered, self._known, READ_BATCH
            )
            self._reading = False
            if not rows or rows[0]["position"] != following or _holes(rows):
                self._skipped(following, rows)
            if rows:
                self._hand_over([self._event(r) for r in rows])
            else:
                self._delivered = self._known
            self._local = {k: v for k, v in self._local.items() if v[-1].position > self._delivered}

    def _skipped(self, following: int, rows: Sequence[Any]) -> None:
        """G4: rows trimmed before this instance delivered them: its streams cannot continue
        without a silent gap, so they end and their clients resume (and hear ``trimmed``)."""
        logger.warning("events from position %d were trimmed before delivery here", following)
        if self._history_lost is not None:
            self._history_lost()

    def _event(self, row: Any) -> Event:
        return Event(self.epoch, row["position"], row["topic"], row["type"], row["data"], row["ts"])

    async def _catch_up(self, position: int) -> None:
        """Wait (bounded) until this instance delivered ``position`` (G2)."""
        if self._delivered >= position or self._deliver is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((position, waiter))
        self._known = max(self._known, position)
        self._wake_reader.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), _CATCH_UP_SECONDS)

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
        assert self._pool is not None
        try:
            row = await self._pool.fetchrow(self.sql.state)
        except asyncpg.UndefinedTableError:
            row = None
        if row is None or row["epoch"] != self.epoch:
            await self._adopt_changed_epoch()
            return
        if row["position"] > self._known:
            self._known = row["position"]
            self._wake_reader.set()

    async def _adopt_changed_epoch(self) -> None:
        old = self.epoch
        newest = await self._create()  # recreates missing tables, reads the epoch
        if self.epoch == old:
            return
        logger.warning("the PostgreSQL event history was lost; new epoch %s", self.epoch)
        self._delivered, self._known, self._local = 0, newest, {}
        self._wake_reader.set()
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
        if self._pool is None:
            await self.connect()
        assert self._pool is not None
        try:
            if after.epoch == self.epoch and after.position > self._delivered:
                newest = await self._pool.fetchval(self.sql.newest)
                if self._deliver is None:  # publish-only: no reader, the table's head
                    self._delivered = max(self._delivered, int(newest or 0))
                elif after.position <= int(newest or 0):
                    await self._catch_up(after.position)
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
        assert self._pool is not None
        touched, self._touched = self._touched, set()
        if touched:
            await self._pool.execute(
                self.sql.trim_topics, sorted(touched), self.retention.max_events_per_topic
            )
        if self.retention.max_age_seconds > 0:
            await self._trim_age(time.time() - self.retention.max_age_seconds)

    async def _trim_age(self, cutoff: float) -> None:
        assert self._pool is not None
        sql = self.sql
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1))", sql.trim_lock
            ):
                return  # another instance is at it
            expired = await conn.fetch(sql.expired, cutoff)
            if not expired:
                return
            topics = [r[0] for r in expired]
            positions = [r[1] for r in expired]
            await conn.execute(sql.mark_many, topics, positions)
            await conn.execute(sql.drop_expired, cutoff, max(positions))
            watermark = await conn.fetchval(sql.fold, topics, positions)
            if watermark is not None:
                await conn.execute(sql.drop_marks, watermark)

    async def publish_in(self, connection: Any, drafts: Sequence[EventDraft]) -> None:
        """Publish ``drafts`` in ``connection``'s transaction: they exist iff it commits (G6).
        The driver's errors are the application's, as for its own statements."""
        await write_outbox(connection, self.sql, drafts)

    async def move_outbox(self) -> int:
        """Move committed outbox rows into the history (G6); the number moved."""
        assert self._pool is not None
        moved = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.sql.move_lock)
                row = await conn.fetchrow(self.sql.move, READ_BATCH, self.sql.channel)
            if row is None:
                return moved
            moved += row["n"]
            if row["position"] > self._known:
                self._known = row["position"]
                self._wake_reader.set()

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


def _holes(rows: Sequence[Any]) -> bool:
    """Whether positions skip a number (G1 leaves none, so retention dropped them: G4)."""
    return bool(rows[-1]["position"] - rows[0]["position"] != len(rows) - 1)


def _settle(done: asyncio.Future[list[Event]], events: list[Event]) -> None:
    if not done.done():
        done.set_result(events)
