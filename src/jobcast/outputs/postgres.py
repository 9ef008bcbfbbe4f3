"""The PostgreSQL backend of output streams: every instance and worker of a deployment whose
broker is PostgreSQL serves every stream, from tables beside the event history.

Decisions (cited as S1..S4):

S1. Each write is one transaction that locks the stream's row (``FOR UPDATE``) before its
    checks (expired? closed? content type? producer epoch and seq? ``Stream-Seq``? size?), so
    the bytes, the producer state and the metadata commit together and appends to one stream
    are serialised across instances: a producer's retry on any instance is a duplicate, never
    a second copy. The checks are the SQLite backend's, in the same order.
S2. Jobs' flushes (``append_stored``) are group-committed as on SQLite: the flushes that queue
    while one transaction commits go in the next, which locks their rows in path order.
S3. Wake-ups: each write also sends ``pg_notify`` with ``{instance} {incarnation} {tail}
    {path}`` (positions, never bytes; a path is at most 1 KiB, well under the 8 KB limit).
    Every instance LISTENs on one connection of its own and wakes its readers of that path;
    its own notifications are skipped, since it woke its readers with the change itself
    (store.W1). A reader never depends on a notification past a wake-up: it reads the table.
    A lost LISTEN connection is reopened with backoff, and every waiting reader is woken to
    read what it may have missed.
S4. Foreign errors stop here: asyncpg and socket errors become :class:`Unavailable` (503).
The connections and the listening are ``_postgres_db.py``, the statements ``_postgres_sql.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from jobcast.errors import Unavailable
from jobcast.outputs._postgres_db import StreamsDatabase
from jobcast.outputs._postgres_sql import Location, StreamStatements
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
from jobcast.outputs.store import Change, Wakeups

logger = logging.getLogger("jobcast.outputs")
_Flush = tuple[Sequence[tuple[str, bytes, bool]], asyncio.Future[None]]


class PostgresStreamStore:
    def __init__(
        self, location: Location, *, max_stream_bytes: int, sweep_interval: float = 60.0
    ) -> None:
        #: The broker's database, schema and table prefix (``brokers._postgres_sql.parse_url``).
        self.location = location
        self.sql = StreamStatements(self.location)
        self.max_stream_bytes = max_stream_bytes
        self.sweep_interval = sweep_interval
        self.wakeups = Wakeups()
        self.db = StreamsDatabase(location, self.sql, self.wakeups)
        self._sweeper: asyncio.Task[None] | None = None
        self._queued: list[_Flush] = []
        self._committer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self.db.open()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobcast-stream-sweep")

    async def close(self) -> None:
        if self._committer is not None:
            with contextlib.suppress(Exception):
                await self._committer  # S2: what was queued commits first
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.db.close()

    # -- writes (S1, S2) ---------------------------------------------------------------------

    async def create(
        self,
        path: str,
        content_type: str,
        *,
        ttl: int | None,
        expires_at: float | None,
        closed: bool,
        body: bytes,
    ) -> tuple[StreamInfo, bool]:
        data = json_messages(body, allow_empty=True) if body and is_json(content_type) else body
        if len(data) > self.max_stream_bytes:
            raise too_large(len(data), self.max_stream_bytes)
        now = time.time()
        created = None
        async with self.db.transaction() as conn:
            info = await self._live(conn, path, now, lock=True)
            if info is None:
                row = await conn.fetchrow(
                    self.sql.insert, path, content_type, ttl, expires_at, closed, len(data), now
                )
                if row is not None:
                    created = _info(row)
                    if data:
                        await conn.execute(self.sql.insert_chunk, created.incarnation, 0, data)
                    await self.db.announce(conn, path, created.incarnation, -1)
                else:
                    info = await self._live(conn, path, now, lock=True)  # another instance's
                    assert info is not None  # its transaction committed: we waited for it
        if created is not None:
            self.wakeups.notify(path)  # committed
            return created, True
        assert info is not None
        return found_again(info, content_type, ttl, expires_at, closed)

    def append_now(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended | None:
        """Never at once: every append is a round trip to PostgreSQL."""
        return None

    async def append(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended:
        now = time.time()
        async with self.db.transaction() as conn:
            info = await self._live(conn, path, now, lock=True)
            if info is None:
                raise not_found(path)
            answer = closed_answer(info, body, close=close, producer=producer)
            if answer is not None:
                return answer
            check_content_type(info, body, content_type)
            if producer is not None:
                last = await self._producer_seq(conn, info.incarnation, producer)
                if last is not None:
                    return Appended(info, fresh=False, producer_seq=last)
            check_seq(info, seq)
            data = stored_form(info, body)
            change = await self._write(conn, info, data, now, close, producer, seq)
        self.wakeups.notify(path, change)  # store.W1
        info.tail, info.closed, info.accessed_at = change.tail, info.closed or close, now
        if seq is not None:
            info.last_seq = seq
        if close and producer is not None:
            info.closed_by = producer
        return Appended(info, producer_seq=producer.seq if producer else None)

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        """Queued for the next group commit (S2)."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((writes, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        await done

    async def _commit_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            writes = [write for flush, _ in batch for write in flush]
            try:
                changes = await self._commit_stored(writes)
            except Exception as exc:  # every flush of the batch learns it (and retries)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for path, change in changes:
                self.wakeups.notify(path, change)  # store.W1
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _commit_stored(
        self, writes: Sequence[tuple[str, bytes, bool]]
    ) -> list[tuple[str, Change]]:
        """A closed or missing stream takes nothing (its job's writer was told it closed)."""
        now = time.time()
        written = []
        async with self.db.transaction() as conn:
            rows = await conn.fetch(self.sql.lock_many, sorted({path for path, _, _ in writes}))
            streams = {info.path: info for info in map(_info, rows)}
            for path, data, close in writes:
                info = streams.get(path)
                if info is None or info.closed:
                    continue
                if info.expired(now):
                    await conn.execute(self.sql.remove, info.incarnation)
                    await self.db.announce(conn, path, info.incarnation, -1)
                    del streams[path]
                    continue
                change = await self._write(conn, info, data, now, close, None, None)
                info.tail, info.closed = change.tail, close
                written.append((path, change))
        return written

    async def delete(self, path: str) -> None:
        async with self.db.transaction() as conn:
            info = await self._live(conn, path, time.time(), lock=True)
            if info is None:
                raise not_found(path)
            await conn.execute(self.sql.remove, info.incarnation)
            await self.db.announce(conn, path, info.incarnation, -1)
        self.wakeups.notify(path)

    async def sweep(self) -> None:
        """Remove every expired stream (one found expired when touched goes at once)."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(self.sql.sweep, time.time())
            for row in rows:
                await self.db.announce(conn, row["path"], row["incarnation"], -1)
        for row in rows:
            self.wakeups.notify(row["path"])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Unavailable as exc:
                logger.warning("sweeping expired streams failed: %s", exc)

    # -- reads -------------------------------------------------------------------------------

    async def head(self, path: str) -> StreamInfo:
        async with self.db.connection() as conn:
            info = await self._live(conn, path, time.time(), lock=False)
        if info is None:
            raise not_found(path)
        return info

    async def read(
        self, path: str, incarnation: int | None, position: int | None, *, touch: bool = True
    ) -> ReadResult:
        now = time.time()
        async with self.db.connection() as conn:
            info = await self._live(conn, path, now, lock=False)
            if info is None:
                raise not_found(path)
            if incarnation is not None and incarnation != info.incarnation:
                if incarnation < info.incarnation:  # model.O2
                    raise StreamError(410, "gone", "the data at this offset was removed")
                raise bad_request("the offset names no data of this stream")
            if position is None:
                position = info.tail
            if position > info.tail:
                raise bad_request("the offset is beyond the end of the stream")
            if touch and info.ttl is not None:
                await conn.execute(self.sql.touch, info.incarnation, now)
            parts: list[bytes] = []
            end = position
            if position < info.tail:
                rows = await conn.fetch(self.sql.chunks, info.incarnation, position, info.tail)
                size = 0
                for start, data in rows:
                    if parts and size + len(data) > READ_BUDGET:
                        break
                    piece = data[position - start :] if not parts else data
                    parts.append(piece)
                    size += len(piece)
                    end = start + len(data)
        return ReadResult(info, position, b"".join(parts), end, end == info.tail)

    async def listing(self, prefix: str) -> list[StreamInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(self.sql.listing, prefix)
        now = time.time()
        return [info for info in map(_info, rows) if not info.expired(now)]

    # -- inside a transaction ----------------------------------------------------------------

    async def _live(self, conn: Any, path: str, now: float, *, lock: bool) -> StreamInfo | None:
        """The live stream at ``path``; one that expired is removed and reads as absent."""
        row = await conn.fetchrow(self.sql.lock if lock else self.sql.load, path)
        if row is None:
            return None
        info = _info(row)
        if info.expired(now):
            async with conn.transaction():
                await conn.execute(self.sql.remove, info.incarnation)
                await self.db.announce(conn, path, info.incarnation, -1)
            self.wakeups.notify(path)
            return None
        return info

    async def _write(
        self,
        conn: Any,
        info: StreamInfo,
        data: bytes,
        now: float,
        close: bool,
        producer: Producer | None,
        seq: str | None,
    ) -> Change:
        tail = info.tail + len(data)
        if tail > self.max_stream_bytes:
            raise too_large(tail, self.max_stream_bytes)
        await conn.execute(
            self.sql.write,
            info.incarnation,
            info.tail,
            data,
            now,
            seq,
            close,
            self.sql.channel,
            self.db.payload(info.path, info.incarnation, tail),
            producer.id if producer else None,
            producer.epoch if producer else None,
            producer.seq if producer else None,
        )
        return Change(info.incarnation, info.tail, data, tail, close)

    async def _producer_seq(self, conn: Any, incarnation: int, producer: Producer) -> int | None:
        """Check a producer's epoch and seq (protocol 5.2.1): ``None`` to accept, the last
        accepted seq for a duplicate, or raise for a stale epoch or a gap."""
        row = await conn.fetchrow(self.sql.producer, incarnation, producer.id)
        if row is None or producer.epoch > row["epoch"]:
            if producer.seq == 0:
                return None
            if row is None:
                raise sequence_gap(0, producer.seq)
            raise new_epoch_seq()
        epoch, last = int(row["epoch"]), int(row["last_seq"])
        if producer.epoch < epoch:
            raise stale_epoch(epoch)
        if producer.seq <= last:
            return last
        if producer.seq == last + 1:
            return None
        raise sequence_gap(last + 1, producer.seq)


def _info(row: Any) -> StreamInfo:
    closer = None
    if row["closed_by_id"] is not None:
        closer = Producer(row["closed_by_id"], row["closed_by_epoch"], row["closed_by_seq"])
    return StreamInfo(
        incarnation=row["incarnation"],
        path=row["path"],
        content_type=row["content_type"],
        ttl=row["ttl"],
        expires_at=row["expires_at"],
        closed=row["closed"],
        tail=row["tail"],
        last_seq=row["last_seq"],
        closed_by=closer,
        accessed_at=row["accessed_at"],
    )
