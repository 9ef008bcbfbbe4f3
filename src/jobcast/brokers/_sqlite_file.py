"""The SQLite broker's file: its schema and every statement it runs, all synchronous.

A :class:`HistoryFile` is made, used and closed on the broker's history thread alone (see
``sqlite.py``, B4): each method is one whole operation, so operations never interleave. The
order of statements inside them carries decisions B2 (retention marks before it deletes;
a read takes the events before the marks) and B3 (a read stops at its byte budget); the
schema carries S1-S3 (an insert writes few pages; age retention walks positions; older files
are brought up to date at open). An :class:`InlineWriter` is the event loop's own connection
for a lone small commit (B6).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from jobcast.brokers.base import new_epoch
from jobcast.topics import TopicPattern

Row = tuple[int, str, str, bytes, float]  # position, topic, type, data, ts

_INSERT = "INSERT INTO events (position, topic, type, data, ts) VALUES (?, ?, ?, ?, ?)"

# S1. An insert writes as few pages as it can: positions are the broker's (no AUTOINCREMENT
#     counter page to update), and no index on ``ts`` (age retention walks positions, S2).
#     The newest position ever stored is then the largest of the events', the marks' and the
#     watermark: retention marks every position before it drops it (B2), so a history
#     emptied by retention still knows where it stood.
_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, position);
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trimmed (topic TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""
    + _EVENTS
)
# S2. (``HistoryFile.trim``) Age retention finds the expired events by position, not by an
#     index on ``ts``.
# S3. A file written before S1 is brought to it once, at open, in one transaction.
_MIGRATE = (
    """
DROP INDEX IF EXISTS events_by_ts;
ALTER TABLE events RENAME TO events_before;
DROP INDEX IF EXISTS events_by_topic;
"""
    + _EVENTS
    + """
INSERT INTO events SELECT position, topic, type, data, ts FROM events_before;
DROP TABLE events_before;
"""
)


def topic_filter(patterns: Sequence[TopicPattern], column: str = "topic") -> tuple[str, list[str]]:
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


class HistoryFile:
    """One connection to the history file, opened (or created) with its schema."""

    def __init__(self, path: Path) -> None:
        self._db = db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            newest = self._migrate()
            db.executescript(_SCHEMA)
            self.epoch = self._meta("epoch") or self._set_meta("epoch", new_epoch())
            # Every position up to here was dropped by age from topics that have no event left.
            self.expired_through = int(self._meta("expired_through") or 0)
            newest = max(newest, self.expired_through, *self._newest_positions())
            db.commit()
        except BaseException:
            db.close()
            raise
        self.newest: int = newest  # the newest position ever stored (S1)

    def _migrate(self) -> int:
        """Bring a file written before S1 to it (S3); the position its counter had reached
        (the positions it held and its marks say as much, S1: this is only a floor)."""
        db = self._db
        row = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
        if row is None or "AUTOINCREMENT" not in row[0].upper():
            return 0
        db.execute("BEGIN IMMEDIATE")
        counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        for statement in _MIGRATE.split(";"):
            if statement.strip():
                db.execute(statement)
        db.commit()
        return 0 if counter is None else int(counter[0])

    def newest_stored(self) -> int:
        """The largest position in the table (0 when it is empty)."""
        row = self._db.execute("SELECT MAX(position) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])

    def _newest_positions(self) -> list[int]:
        marked = self._db.execute("SELECT MAX(position) FROM trimmed").fetchone()[0]
        return [self.newest_stored(), 0 if marked is None else int(marked)]

    def close(self) -> None:
        self._db.close()

    def insert(self, rows: list[Row]) -> None:
        """Store a batch in one transaction."""
        self._db.executemany(_INSERT, rows)
        self._db.commit()

    def read(
        self,
        patterns: Sequence[TopicPattern],
        after: int,
        head: int,
        limit: int,
        budget: float,
    ) -> tuple[list[Row], bool, int]:
        """The rows after ``after`` up to ``head`` (at most ``limit + 1``), whether they went
        over ``budget`` bytes of data, and the newest position dropped from these topics."""
        where, params = topic_filter(patterns)
        rows: list[Row] = []
        size = 0
        cursor = self._db.execute(
            "SELECT position, topic, type, data, ts FROM events"
            f" WHERE position > ? AND position <= ? AND ({where}) ORDER BY position LIMIT ?",
            [after, head, *params, limit + 1],
        )
        over = False
        for row in cursor:  # B3: read as stepped, up to the budget
            size += len(row[3])
            if size > budget:
                over = True
                break
            rows.append(row)
        cursor.close()
        # B2: the marks after the events: a drop we missed has been recorded by now.
        mark = self._db.execute(f"SELECT MAX(position) FROM trimmed WHERE {where}", params)
        newest = mark.fetchone()[0]
        return rows, over, max(self.expired_through, 0 if newest is None else int(newest))

    def trim(self, touched: set[str], keep: int, cutoff: float) -> None:
        """Keep at most ``keep`` events in each ``touched`` topic and none older than
        ``cutoff``, in one transaction; every drop is marked before its rows go (B2)."""
        db = self._db
        # The write lock first, so the pass is one transaction however the loop's own commits
        # (B6) fall between its statements; those find the file busy and queue meanwhile.
        db.execute("BEGIN IMMEDIATE")
        for topic in touched:
            newest_dropped = db.execute(
                "SELECT position FROM events WHERE topic = ? ORDER BY position DESC"
                " LIMIT 1 OFFSET ?",
                (topic, keep),
            ).fetchone()
            if newest_dropped is not None:
                self._mark_trimmed(topic, newest_dropped[0])
                db.execute(
                    "DELETE FROM events WHERE topic = ? AND position <= ?",
                    (topic, newest_dropped[0]),
                )
        # S2: events are stored in the order of their times, so those older than the cutoff
        # are the positions before the first one that is not (found by walking from the
        # oldest: as many rows as expired). Should the clock step back, an older event
        # stored after a newer one waits for the newer one to expire.
        first_kept = db.execute(
            "SELECT position FROM events WHERE ts >= ? ORDER BY position LIMIT 1", (cutoff,)
        ).fetchone()
        before = first_kept[0] if first_kept is not None else self.newest_stored() + 1
        expired: dict[str, int] = dict(
            db.execute(
                "SELECT topic, MAX(position) FROM events WHERE position < ? GROUP BY topic",
                (before,),
            ).fetchall()
        )
        if expired:
            for topic, position in expired.items():
                self._mark_trimmed(topic, position)
            db.execute("DELETE FROM events WHERE position <= ?", (max(expired.values()),))
            for topic, position in expired.items():
                if db.execute("SELECT 1 FROM events WHERE topic = ? LIMIT 1", (topic,)).fetchone():
                    continue
                # fold the topic into the global watermark, raised before its mark goes
                self.expired_through = max(self.expired_through, position)
            self._set_meta("expired_through", str(self.expired_through))
            db.execute("DELETE FROM trimmed WHERE position <= ?", (self.expired_through,))
        db.commit()
        # The loop's connection never checkpoints (B6): the log is folded back here.
        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _mark_trimmed(self, topic: str, position: int) -> None:
        self._db.execute(
            "INSERT INTO trimmed (topic, position) VALUES (?, ?) ON CONFLICT (topic)"
            " DO UPDATE SET position = MAX(position, excluded.position)",
            (topic, position),
        )

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value ="
            " excluded.value",
            (key, value),
        )
        return value


class InlineWriter:
    """The event loop's own connection to the history file: a lone small batch is committed
    here, without a hop to the history thread (B6).

    It never waits for the file (a busy file answers ``False`` at once, and the batch goes to
    the history thread) and never checkpoints: the write-ahead log is folded back on the
    history thread, whose fsyncs must not stall the loop.
    """

    def __init__(self, path: Path) -> None:
        self._db = db = sqlite3.connect(path, timeout=0)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def insert(self, rows: list[Row]) -> bool:
        """Store a batch in one transaction; ``False`` when another connection holds the file."""
        try:
            self._db.executemany(_INSERT, rows)
            self._db.commit()
        except sqlite3.OperationalError as exc:
            self._db.rollback()
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise
        return True
