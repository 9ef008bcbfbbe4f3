"""The SQLite file of output streams: its schema and statements, run on the store's thread.

Every method is one operation run whole on one thread (``sqlite.py``), so the checks and the
writes of an append (closed? content type? producer? ``Stream-Seq``?) and its commit never
interleave with another append: the producer state commits with the bytes (store contract).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from jobcast.outputs.model import (
    READ_BUDGET,
    Appended,
    Producer,
    ReadResult,
    StreamError,
    StreamInfo,
    bad_request,
    check_content_type,
    check_seq,
    closed_answer,
    found_again,
    is_json,
    json_messages,
    new_epoch_seq,
    not_found,
    sequence_gap,
    stale_epoch,
    stored_form,
    too_large,
)
from jobcast.outputs.store import Change

SCHEMA = """
CREATE TABLE IF NOT EXISTS ds_streams (
    incarnation INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    ttl INTEGER,
    expires_at REAL,
    closed INTEGER NOT NULL DEFAULT 0,
    tail INTEGER NOT NULL DEFAULT 0,
    last_seq TEXT,
    closed_by_id TEXT,
    closed_by_epoch INTEGER,
    closed_by_seq INTEGER,
    accessed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ds_chunks (
    incarnation INTEGER NOT NULL,
    start INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (incarnation, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_producers (
    incarnation INTEGER NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (incarnation, producer)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "incarnation, path, content_type, ttl, expires_at, closed, tail, last_seq, "
    "closed_by_id, closed_by_epoch, closed_by_seq, accessed_at"
)


#: A job's flushed bytes taken by an open, live stream with room for them, in one statement
#: that also says where they go (``append_stored``); no row when it is not such a stream.
_STORED = (
    "UPDATE ds_streams SET tail = tail + ?1, accessed_at = ?2, closed = ?3 "
    "WHERE path = ?4 AND closed = 0 AND tail + ?1 <= ?5 "
    "AND (expires_at IS NULL OR expires_at > ?2) AND (ttl IS NULL OR accessed_at + ttl > ?2) "
    "RETURNING incarnation, tail"
)


class StreamsFile:
    def __init__(self, path: Path | str, max_stream_bytes: int, *, inline: bool = False) -> None:
        """The store's connection (on its thread), or with ``inline`` the event loop's own
        for lone small writes (``sqlite.py`` O1): that one never waits for the file (a busy
        file raises at once) and never checkpoints (the store's thread does)."""
        self.max_stream_bytes = max_stream_bytes
        if inline:
            self._db = db = sqlite3.connect(path, timeout=0, isolation_level=None)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            return
        self._db = db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)

    def checkpoint(self) -> None:
        """Fold the write-ahead log back into the file (the inline connection never does)."""
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        self._db.close()

    # -- reads ------------------------------------------------------------------------------

    def load(self, path: str, now: float) -> StreamInfo | None:
        """The live stream at ``path``; one that expired is removed and reads as absent."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM ds_streams WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        info = _info(row)
        if info.expired(now):
            self._remove(info.incarnation)
            return None
        return info

    def existing(self, path: str, now: float) -> StreamInfo:
        info = self.load(path, now)
        if info is None:
            raise not_found(path)
        return info

    def read(
        self, path: str, incarnation: int | None, position: int | None, now: float, touch: bool
    ) -> ReadResult:
        info = self.existing(path, now)
        if position is None:  # the tail: "now"
            position = info.tail
        if incarnation is not None and incarnation != info.incarnation:
            if incarnation < info.incarnation:  # model.O2
                raise StreamError(410, "gone", "the data at this offset was removed")
            raise bad_request("the offset names no data of this stream")
        if position > info.tail:
            raise bad_request("the offset is beyond the end of the stream")
        if touch and info.ttl is not None:
            self._db.execute(
                "UPDATE ds_streams SET accessed_at = ? WHERE incarnation = ?",
                (now, info.incarnation),
            )
        parts: list[bytes] = []
        end = position
        if position < info.tail:
            rows = self._db.execute(
                "SELECT start, data FROM ds_chunks WHERE incarnation = ? AND start >= "
                "(SELECT MAX(start) FROM ds_chunks WHERE incarnation = ? AND start <= ?) "
                "ORDER BY start",
                (info.incarnation, info.incarnation, position),
            )
            size = 0
            for start, data in rows:
                if parts and size + len(data) > READ_BUDGET:
                    break
                piece = bytes(data)[position - start :] if not parts else bytes(data)
                parts.append(piece)
                size += len(piece)
                end = start + len(data)
        return ReadResult(info, position, b"".join(parts), end, end == info.tail)

    def listing(self, prefix: str, now: float) -> list[StreamInfo]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM ds_streams WHERE path LIKE ? ESCAPE '\\' ORDER BY path",
            (escaped + "%",),
        ).fetchall()
        return [info for info in map(_info, rows) if not info.expired(now)]

    # -- writes -----------------------------------------------------------------------------

    def create(
        self,
        path: str,
        content_type: str,
        ttl: int | None,
        expires_at: float | None,
        closed: bool,
        body: bytes,
        now: float,
    ) -> tuple[StreamInfo, bool]:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            info = self.load(path, now)
            if info is not None:
                return found_again(info, content_type, ttl, expires_at, closed)
            data = json_messages(body, allow_empty=True) if body and is_json(content_type) else body
            self._check_size(0, len(data))
            cursor = self._db.execute(
                "INSERT INTO ds_streams (path, content_type, ttl, expires_at, closed, tail, "
                "accessed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, content_type, ttl, expires_at, int(closed), len(data), now),
            )
            incarnation = cursor.lastrowid or 0
            if data:
                self._db.execute("INSERT INTO ds_chunks VALUES (?, 0, ?)", (incarnation, data))
        created = self.load(path, 0.0)  # as written, even if it expires at once
        assert created is not None  # inserted just above, on this one thread
        return created, True

    def append(
        self,
        path: str,
        body: bytes,
        content_type: str | None,
        seq: str | None,
        producer: Producer | None,
        close: bool,
        now: float,
    ) -> tuple[Appended, Change | None]:
        """The append's outcome, and the change it made when it made one (store.W1)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            info = self.existing(path, now)
            answer = closed_answer(info, body, close=close, producer=producer)
            if answer is not None:
                return answer, None
            check_content_type(info, body, content_type)
            if producer is not None:
                last_seq = self._producer_seq(info.incarnation, producer)
                if last_seq is not None:
                    return Appended(info, fresh=False, producer_seq=last_seq), None
            check_seq(info, seq)
            data = stored_form(info, body)
            after = self._write(info, data, now, close, producer, seq)
        change = Change(info.incarnation, info.tail, data, after.tail, after.closed)
        seq_taken = producer.seq if producer else None
        return Appended(after, producer_seq=seq_taken), change

    def append_stored(
        self, writes: Sequence[tuple[str, bytes, bool]], now: float
    ) -> list[tuple[str, Change]]:
        """Framed appends in one commit; returns what changed. A closed or missing stream
        takes nothing (its job's writer was told when it closed)."""
        written = []
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            for path, data, close in writes:
                size = len(data)
                row = db.execute(
                    _STORED, (size, now, int(close), path, self.max_stream_bytes)
                ).fetchone()
                if row is None:  # closed, missing, expired or too large: the long way
                    info = self.load(path, now)
                    if info is None or info.closed:
                        continue
                    self._write(info, data, now, close, None, None)  # raises if too large
                    row = (info.incarnation, info.tail + size)
                elif data:
                    db.execute(
                        "INSERT INTO ds_chunks VALUES (?, ?, ?)", (row[0], row[1] - size, data)
                    )
                incarnation, tail = row
                written.append((path, Change(incarnation, tail - size, data, tail, close)))
        return written

    def sweep(self, now: float) -> list[str]:
        """Remove every stream whose TTL or expiry passed; returns their paths."""
        rows = self._db.execute(
            "SELECT incarnation, path FROM ds_streams WHERE expires_at <= ? "
            "OR (ttl IS NOT NULL AND accessed_at + ttl <= ?)",
            (now, now),
        ).fetchall()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for incarnation, _ in rows:
                self._remove(incarnation)
        return [path for _, path in rows]

    def delete(self, path: str, now: float) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._remove(self.existing(path, now).incarnation)

    # -- inside a transaction ---------------------------------------------------------------

    def _write(
        self,
        info: StreamInfo,
        data: bytes,
        now: float,
        close: bool,
        producer: Producer | None,
        seq: str | None,
    ) -> StreamInfo:
        """Store ``data`` after ``info``'s tail; the stream as the write leaves it (as a read
        after the commit would find it, without that read)."""
        self._check_size(info.tail, len(data))
        if data:
            self._db.execute(
                "INSERT INTO ds_chunks VALUES (?, ?, ?)", (info.incarnation, info.tail, data)
            )
        closer = producer if close else None
        self._db.execute(
            "UPDATE ds_streams SET tail = tail + ?, accessed_at = ?, "
            "last_seq = COALESCE(?, last_seq), closed = MAX(closed, ?), "
            "closed_by_id = COALESCE(?, closed_by_id), closed_by_epoch = COALESCE(?, "
            "closed_by_epoch), closed_by_seq = COALESCE(?, closed_by_seq) WHERE incarnation = ?",
            (
                len(data),
                now,
                seq,
                int(close),
                closer.id if closer else None,
                closer.epoch if closer else None,
                closer.seq if closer else None,
                info.incarnation,
            ),
        )
        if producer is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO ds_producers VALUES (?, ?, ?, ?)",
                (info.incarnation, producer.id, producer.epoch, producer.seq),
            )
        return dataclasses.replace(
            info,
            tail=info.tail + len(data),
            accessed_at=now,
            last_seq=info.last_seq if seq is None else seq,
            closed=info.closed or close,
            closed_by=info.closed_by if closer is None else closer,
        )

    def _producer_seq(self, incarnation: int, producer: Producer) -> int | None:
        """Check a producer's epoch and seq (protocol 5.2.1): ``None`` to accept, the last
        accepted seq for a duplicate, or raise for a stale epoch or a gap."""
        row = self._db.execute(
            "SELECT epoch, last_seq FROM ds_producers WHERE incarnation = ? AND producer = ?",
            (incarnation, producer.id),
        ).fetchone()
        if row is None or producer.epoch > row[0]:
            if producer.seq == 0:
                return None
            if row is None:
                raise sequence_gap(0, producer.seq)
            raise new_epoch_seq()
        epoch, last = row
        if producer.epoch < epoch:
            raise stale_epoch(epoch)
        if producer.seq <= last:
            return int(last)
        if producer.seq == last + 1:
            return None
        raise sequence_gap(last + 1, producer.seq)

    def _check_size(self, tail: int, size: int) -> None:
        if tail + size > self.max_stream_bytes:
            raise too_large(tail + size, self.max_stream_bytes)

    def _remove(self, incarnation: int) -> None:
        for table in ("ds_chunks", "ds_producers", "ds_streams"):
            self._db.execute(f"DELETE FROM {table} WHERE incarnation = ?", (incarnation,))


def _info(row: tuple[object, ...]) -> StreamInfo:
    (incarnation, path, content_type, ttl, expires_at, closed, tail, last_seq) = row[:8]
    closed_by_id, closed_by_epoch, closed_by_seq, accessed_at = row[8:]
    closer = None
    if isinstance(closed_by_id, str):
        closer = Producer(closed_by_id, int(str(closed_by_epoch)), int(str(closed_by_seq)))
    return StreamInfo(
        incarnation=int(str(incarnation)),
        path=str(path),
        content_type=str(content_type),
        ttl=None if ttl is None else int(str(ttl)),
        expires_at=None if expires_at is None else float(str(expires_at)),
        closed=bool(closed),
        tail=int(str(tail)),
        last_seq=None if last_seq is None else str(last_seq),
        closed_by=closer,
        accessed_at=float(str(accessed_at)),
    )
