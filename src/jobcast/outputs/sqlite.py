"""The embedded backend of output streams: a SQLite file next to the event history.

One connection on one thread of its own runs each operation whole (``_sqlite_file.py``), as
the history does (brokers/sqlite.B4): an append's checks, bytes and producer state commit
together, and appends to one stream are serialised without a lock. Offsets are positions in
the file's rows, so they survive restarts; after each committed change the path's live readers
are woken (``store.Wakeups``).
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

    async def open(self) -> None:
        if isinstance(self.path, Path):
            create_private(self.path)  # jobs' output can be private: 0600, as is the history
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="jobcast-streams")
        self._file = await self._run(lambda: StreamsFile(self.path, self.max_stream_bytes))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobcast-stream-sweep")

    async def _sweep_forever(self) -> None:
        """Expired streams are removed when next touched, and by this pass otherwise, so a
        stream nobody asks for again does not stay on disk."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                for path in await self._run(lambda: self._opened().sweep(time.time())):
                    self.wakeups.notify(path)
            except (sqlite3.Error, RuntimeError) as exc:
                logger.warning("sweeping expired streams failed: %s", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
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
        file = self._opened()
        result = await self._run(
            lambda: file.create(path, content_type, ttl, expires_at, closed, body, time.time())
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
        file = self._opened()
        appended, change = await self._run(
            lambda: file.append(path, body, content_type, seq, producer, close, time.time())
        )
        if appended.fresh:
            self.wakeups.notify(path, change)  # store.W1: live readers need not read
        return appended

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        """Queued for the next group commit: one transaction for every job's flush that
        arrived while the previous one committed (brokers/sqlite.py does the same)."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((writes, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        await done

    async def _commit_queued(self) -> None:
        file = self._opened()
        while self._queued:
            batch, self._queued = self._queued, []
            writes = [write for flush, _ in batch for write in flush]
            try:
                changes = await self._run(
                    functools.partial(file.append_stored, writes, time.time())
                )
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
        file = self._opened()
        await self._run(lambda: file.delete(path, time.time()))
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
