"""The embedded backend of output streams: a SQLite file next to the event history.

One connection on one thread of its own runs each operation whole (``_sqlite_file.py``), as
the history does (brokers/sqlite.B4): an append's checks, bytes and producer state commit
together, and appends to one stream are serialised without a lock. Offsets are positions in
the file's rows, so they survive restarts; after each committed change the path's live readers
are woken (``store.Wakeups``).

Decisions (cited as O1):

O1. An append (``POST /v1/stream/...``, one a request) is committed on the event loop
    itself, as the event history's lone publishes are (brokers/sqlite.B6): when no write is
    on the store's thread (handed over and not yet done), it goes through the loop's own
    connection (``StreamsFile(inline=True)``), a WAL append with no hop to the thread and
    back, whose two wake-ups cost more than the commit. A busy file (the thread holds it)
    sends it to the thread as before. With no write on the thread, the wake-ups still reach
    readers in commit order (store.W1). Jobs' flushes (``append_stored``) stay group
    commits on the thread: many jobs' flushes share one commit there, which measured
    cheaper than one commit each on the loop. The loop's connection never checkpoints:
    after every ``INLINE_CHECKPOINT`` of its commits the thread folds the log back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from jobcast._files import create_private
from jobcast.outputs._sqlite_file import StreamsFile
from jobcast.outputs.model import Appended, Producer, ReadResult, StreamInfo
from jobcast.outputs.store import Wakeups

T = TypeVar("T")
logger = logging.getLogger("jobcast.outputs")

#: The thread folds the log back after this many commits on the loop (O1): a few MB of log.
INLINE_CHECKPOINT = 200


class _Busy:
    """A write the loop's connection could not make (O1): the thread makes it."""


BUSY = _Busy()


class SQLiteStreamStore:
    def __init__(
        self, path: Path | str, *, max_stream_bytes: int, sweep_interval: float = 60.0
    ) -> None:
        #: A file path, or ``:memory:`` (the memory deployment).
        self.path = path
        self.max_stream_bytes = max_stream_bytes
        self.sweep_interval = sweep_interval
        self.wakeups = Wakeups()
        self._sweeper: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._file: StreamsFile | None = None
        self._queued: list[tuple[Sequence[tuple[str, bytes, bool]], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._inline: StreamsFile | None = None  # the loop's own connection (O1)
        self._writing = 0  # writes on the thread, handed over and not yet done (O1)
        self._inline_commits = 0
        self._checkpoint: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if isinstance(self.path, Path):
            create_private(self.path)  # jobs' output can be private: 0600, as is the history
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="jobcast-streams")
        self._file = await self._run(lambda: StreamsFile(self.path, self.max_stream_bytes))
        if isinstance(self.path, Path):  # ":memory:" would be a database of its own
            self._inline = StreamsFile(self.path, self.max_stream_bytes, inline=True)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobcast-stream-sweep")

    async def _sweep_forever(self) -> None:
        """Expired streams are removed when next touched, and by this pass otherwise, so a
        stream nobody asks for again does not stay on disk."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                for path in await self._write(lambda file: file.sweep(time.time())):
                    self.wakeups.notify(path)
            except (sqlite3.Error, RuntimeError) as exc:
                logger.warning("sweeping expired streams failed: %s", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._checkpoint is not None:
            with contextlib.suppress(Exception):
                await self._checkpoint
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._thread is None:
            return
        file, self._file = self._file, None
        if file is not None:
            await self._run(file.close)
        self._thread.shutdown(wait=True)
        self._thread = None

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
        result = await self._write(
            lambda file: file.create(path, content_type, ttl, expires_at, closed, body, time.time())
        )
        self.wakeups.notify(path)
        return result

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
        inline = self.append_now(
            path, body, content_type=content_type, seq=seq, producer=producer, close=close
        )
        if inline is not None:
            return inline
        now = time.time()
        appended, change = await self._write(
            lambda file: file.append(path, body, content_type, seq, producer, close, now)
        )
        if appended.fresh:
            self.wakeups.notify(path, change)  # store.W1: live readers need not read
        return appended

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
        """The append on the loop's own connection (O1), or ``None`` when a write is on the
        thread or the thread holds the file."""
        now = time.time()
        done = self._write_inline(
            lambda file: file.append(path, body, content_type, seq, producer, close, now)
        )
        if isinstance(done, _Busy):
            return None
        appended, change = done
        if appended.fresh:
            self.wakeups.notify(path, change)  # store.W1: live readers need not read
        return appended

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        """Queued for the next group commit: one transaction for every job's flush that
        arrived while the previous one committed (brokers/sqlite.py does the same). Never on
        the loop (O1): at the rates jobs write, group commits cost less."""
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
                stored = functools.partial(
                    StreamsFile.append_stored, writes=writes, now=time.time()
                )
                changes = await self._write(stored)
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

    async def head(self, path: str) -> StreamInfo:
        file = self._opened()
        return await self._run(lambda: file.existing(path, time.time()))

    async def read(
        self, path: str, incarnation: int | None, position: int | None, *, touch: bool = True
    ) -> ReadResult:
        file = self._opened()
        return await self._run(lambda: file.read(path, incarnation, position, time.time(), touch))

    async def delete(self, path: str) -> None:
        await self._write(lambda file: file.delete(path, time.time()))
        self.wakeups.notify(path)

    async def listing(self, prefix: str) -> list[StreamInfo]:
        file = self._opened()
        return await self._run(lambda: file.listing(prefix, time.time()))

    def _opened(self) -> StreamsFile:
        if self._file is None:
            raise RuntimeError("the stream store is not open")
        return self._file

    async def _run(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    async def _write(self, function: Callable[[StreamsFile], T]) -> T:
        """A write on the store's thread, counted while it is there (O1)."""
        file = self._opened()
        self._writing += 1
        try:
            return await self._run(lambda: function(file))
        finally:
            self._writing -= 1

    def _write_inline(self, function: Callable[[StreamsFile], T]) -> T | _Busy:
        """A write on the loop's own connection (O1), or :data:`BUSY` when a write is on the
        thread or the thread holds the file."""
        file = self._inline
        if file is None or self._writing:
            return BUSY
        try:
            result = function(file)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return BUSY
        self._inline_commits += 1
        if self._inline_commits % INLINE_CHECKPOINT == 0 and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._checkpoint = asyncio.create_task(self._fold_back())
        return result

    async def _fold_back(self) -> None:
        """Checkpoint the log the loop's connection wrote (O1), on the thread."""
        file = self._file
        if file is None:
            return
        try:
            await self._run(file.checkpoint)
        except sqlite3.Error as exc:
            logger.warning("folding the output streams' log back failed: %s", exc)
