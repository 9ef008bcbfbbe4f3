"""The embedded default: in-process fan-out with history in a SQLite file.

Publishing is a group commit: concurrent ``publish`` calls queue their events, one writer task
inserts everything queued in a single transaction, then delivers the batch and answers every
caller. A burst of publishes costs one commit, and an event is delivered (and acknowledged) only
once it is in the file, so a restart never reuses a position a client has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from jobcast._lock import ProcessLock
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, position);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS trimmed (topic TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


def _topic_filter(patterns: Sequence[TopicPattern], column: str = "topic") -> tuple[str, list[str]]:
    """A WHERE clause (and its parameters) matching any of ``patterns``; prefixes use ranges."""
    clauses: list[str] = []
    params: list[str] = []
    exact = [p.text for p in patterns if p.prefix is None]
    if exact:
        clauses.append(f"{column} IN ({','.join('?' * len(exact))})")
        params.extend(exact)
    for pattern in patterns:
        if pattern.prefix == "":
            return "1", []
        if pattern.prefix is not None:
            # Every topic starting with "a/" sorts in ["a/", "a0"): '0' follows '/'.
            clauses.append(f"({column} >= ? AND {column} < ?)")
            params.extend([pattern.prefix, pattern.prefix[:-1] + "0"])
    return " OR ".join(clauses), params


class SQLiteBroker:
    def __init__(self, path: Path, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.path = path
        self.retention = retention
        self.epoch = ""
        self._trim_interval = trim_interval
        self._db: aiosqlite.Connection | None = None
        self._deliver: Deliver | None = None
        self._assigned = 0  # newest position handed out
        self._committed = 0  # newest position in the file
        self._expired_through = 0
        self._queue: list[Event] = []
        self._queue_done: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = ProcessLock(path.with_name(path.name + ".lock"), "the event history")

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._lock.acquire()  # one process per history: others would never see our events
        try:
            self._db = db = await aiosqlite.connect(self.path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
            self.epoch = await self._meta("epoch") or await self._set_meta("epoch", new_epoch())
            self._expired_through = int(await self._meta("expired_through") or 0)
            async with db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'") as cur:
                row = await cur.fetchone()
            await db.commit()
        except sqlite3.Error as exc:
            self._lock.release()
            raise Unavailable(f"cannot open the event history at {self.path}: {exc}") from exc
        self._assigned = self._committed = int(row[0]) if row else 0
        self._tasks = [
            asyncio.create_task(self._write_forever()),
            asyncio.create_task(self._trim_forever()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue:
            await self._commit_queue()
        if self._db is not None:
            await self._db.close()
            self._db = None
        self._lock.release()

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._db is None:
            raise Unavailable("the event history is closed")
        now = time.time()
        events = []
        for draft in drafts:
            self._assigned += 1
            events.append(
                Event(self.epoch, self._assigned, draft.topic, draft.type, draft.data_json, now)
            )
        if self._queue_done is None:
            self._queue_done = asyncio.get_running_loop().create_future()
        done = self._queue_done
        self._queue.extend(events)
        self._wakeup.set()
        await asyncio.shield(done)
        return events

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._queue:
                await self._commit_queue()

    async def _commit_queue(self) -> None:
        batch, done = self._queue, self._queue_done
        self._queue, self._queue_done = [], None
        db = self._db
        try:
            if db is None:
                raise sqlite3.OperationalError("closed")
            await db.executemany(
                "INSERT INTO events (position, topic, type, data, ts) VALUES (?, ?, ?, ?, ?)",
                [(e.position, e.topic, e.type, e.data_json, e.ts) for e in batch],
            )
            await db.commit()
        except sqlite3.Error as exc:
            if done is not None and not done.done():
                done.set_exception(Unavailable(f"could not store events: {exc}"))
            return
        self._committed = batch[-1].position
        self._touched.update(e.topic for e in batch)
        if self._deliver is not None:
            self._deliver(batch)
        if done is not None and not done.done():
            done.set_result(None)

    async def replay(self, patterns: Sequence[TopicPattern], after: EventId, limit: int) -> Replay:
        if self._db is None:
            raise Unavailable("the event history is closed")
        head = EventId(self.epoch, self._committed)
        gap = check_position(self.epoch, head.position, after)
        if gap is not None:
            return Replay([], head, gap)
        where, params = _topic_filter(patterns)
        try:
            trimmed = self._expired_through
            async with self._db.execute(
                f"SELECT MAX(position) FROM trimmed WHERE {where}", params
            ) as cursor:
                row = await cursor.fetchone()
            if row and row[0] is not None:
                trimmed = max(trimmed, int(row[0]))
            if trimmed > after.position:
                return Replay([], head, Gap.TRIMMED)
            async with self._db.execute(
                "SELECT position, topic, type, data, ts FROM events"
                f" WHERE position > ? AND position <= ? AND ({where}) ORDER BY position LIMIT ?",
                [after.position, head.position, *params, limit + 1],
            ) as cursor:
                rows = list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise Unavailable(f"could not read the event history: {exc}") from exc
        if len(rows) > limit:
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        events = [Event(self.epoch, r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]
        return Replay(events, head)

    async def trim(self) -> None:
        """Apply retention: keep at most N events per topic, none older than the age limit."""
        if self._db is None:
            return
        db = self._db
        touched, self._touched = self._touched, set()
        keep = self.retention.max_events_per_topic
        for topic in touched:
            async with db.execute(
                "DELETE FROM events WHERE topic = ? AND position <= (SELECT position FROM events"
                " WHERE topic = ? ORDER BY position DESC LIMIT 1 OFFSET ?) RETURNING position",
                (topic, topic, keep),
            ) as cursor:
                dropped = [r[0] for r in await cursor.fetchall()]
            if dropped:
                await self._mark_trimmed(topic, max(dropped))
        cutoff = time.time() - self.retention.max_age_seconds
        async with db.execute(
            "DELETE FROM events WHERE ts < ? RETURNING topic, position", (cutoff,)
        ) as cursor:
            expired: dict[str, int] = {}
            for topic, position in await cursor.fetchall():
                expired[topic] = max(position, expired.get(topic, 0))
        for topic, position in expired.items():
            async with db.execute("SELECT 1 FROM events WHERE topic = ? LIMIT 1", (topic,)) as c:
                still_has_events = await c.fetchone() is not None
            if still_has_events:
                await self._mark_trimmed(topic, position)
            else:  # the topic is gone: fold it into the global watermark
                self._expired_through = max(self._expired_through, position)
        if expired:
            await self._set_meta("expired_through", str(self._expired_through))
            await db.execute("DELETE FROM trimmed WHERE position <= ?", (self._expired_through,))
        await db.commit()

    async def _mark_trimmed(self, topic: str, position: int) -> None:
        assert self._db is not None
        await self._db.execute(
            "INSERT INTO trimmed (topic, position) VALUES (?, ?) ON CONFLICT (topic)"
            " DO UPDATE SET position = MAX(position, excluded.position)",
            (topic, position),
        )

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            try:
                await self.trim()
            except sqlite3.Error:
                continue  # retention is retried on the next tick; publishing is unaffected

    async def _meta(self, key: str) -> str | None:
        assert self._db is not None
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> str:
        assert self._db is not None
        await self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value ="
            " excluded.value",
            (key, value),
        )
        return value
