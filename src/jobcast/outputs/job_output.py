"""A job's output streams: ``out = ctx.stream("output")``, then ``out.write(chunk)`` at will.

Decisions (cited as J1..J4):

J1. ``write`` never waits and never drops: it frames the chunk, appends it to the job's
    pending bytes under a lock (from any thread) and, if no flush is under way, asks the event
    loop for one (one thread hop per flush, not per chunk). A flush writes everything pending,
    of every stream of the job, in one backend commit; what arrives during a commit goes in
    the next one. Chunks are never merged across streams nor reordered within one.
J2. A stream's size is bounded by the store's ``max_stream_bytes``, counted at ``write``: the
    write that would cross it raises :class:`~jobcast.errors.PayloadTooLarge` in the handler,
    and nothing of it is kept (what came before stays).
J3. Streams are ``jobs/{job id}/{name}``. They are created at the first flush after ``stream``
    (so a job's snapshot lists a stream as soon as the job opened it) and closed when the
    job ends (``close_all``, before its terminal event); a handler may close one earlier.
    A retried job's next attempt appends to the same streams, also when the attempt before
    it ran on a worker that died or in a server that crashed (what it stored stays, and the
    next attempt's writes follow it); a stream that attempt closed takes nothing more. A job
    that ends with streams its own run did not open (lifecycle.R6), or with no run here at
    all (a queue task's job, jobs/reported.R6), has every one still open under its path
    closed too (``close_left_open``).
J4. A flush the backend refuses for a while (``Unavailable``) is retried with backoff, the
    bytes kept; a stream deleted meanwhile takes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from jobcast.errors import InvalidInput, JobcastError
from jobcast.outputs.model import check_room, framed_write, is_json, media_type
from jobcast.outputs.store import StreamStore

logger = logging.getLogger("jobcast.outputs")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


@dataclass
class _Pending:
    """What one stream has waiting for the next flush."""

    parts: list[bytes] = field(default_factory=list)
    close: bool = False


class OutputStream:
    """One output stream of a running job, as its handler writes it. Safe from any thread."""

    def __init__(self, outputs: JobOutputs, name: str, content_type: str) -> None:
        self.name = name
        self.path = f"jobs/{outputs.job_id}/{name}"
        self.content_type = content_type
        #: Bytes written so far (framed: a JSON stream counts each message and its comma).
        self.length = 0
        self.closed = False
        self._outputs = outputs
        self._json = is_json(content_type)

    def write(self, chunk: str | bytes | Any) -> None:
        """Append ``chunk``: text (``str``) or ``bytes``, or for an ``application/json``
        stream any JSON value (one message). Cheap and non-blocking (J1)."""
        self._outputs.queue(self, self._frame(chunk), close=False)

    def close(self) -> None:
        """Close the stream now (else it closes when the job ends); readers see its end."""
        self._outputs.queue(self, b"", close=True)

    def _frame(self, chunk: Any) -> bytes:
        return framed_write(chunk, self.content_type, as_json=self._json)


class JobOutputs:
    """The output streams of one job, and their flushes (J1)."""

    def __init__(self, store: StreamStore, job_id: str, *, whole: bool = True) -> None:
        self.store = store
        self.job_id = job_id
        #: Whether these are all the job's streams: made for its first run, no other run of
        #: it (an earlier attempt on a worker that died, a run before a park) opened any.
        self.whole = whole
        self.streams: dict[str, OutputStream] = {}
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._mutex = threading.Lock()
        self._new: list[OutputStream] = []
        self._pending: dict[str, _Pending] = {}
        self._armed = False
        self._task: asyncio.Task[None] | None = None

    def open(self, name: str, content_type: str) -> OutputStream:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidInput("a stream name is 1-64 letters, digits, '.', '_' or '-'")
        with self._mutex:
            stream = self.streams.get(name)
            if stream is not None:
                if media_type(stream.content_type) != media_type(content_type):
                    raise InvalidInput(f"stream {name!r} is already {stream.content_type}")
                return stream
            stream = self.streams[name] = OutputStream(self, name, content_type)
            self._new.append(stream)
        self._arm()
        return stream

    def queue(self, stream: OutputStream, data: bytes, *, close: bool) -> None:
        with self._mutex:
            if stream.closed:
                if close:
                    return
                raise ValueError(f"output stream {stream.name!r} is closed")
            check_room(stream.name, stream.length, len(data), self.store.max_stream_bytes)  # J2
            stream.length += len(data)
            pending = self._pending.setdefault(stream.path, _Pending())
            if data:
                pending.parts.append(data)
            if close:
                stream.closed = pending.close = True
        self._arm()

    async def flush(self) -> None:
        """Wait until everything written so far is stored."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close_all(self) -> None:
        """Close every stream still open, then flush (J3: the job ended)."""
        for stream in list(self.streams.values()):
            stream.close()
        await self.flush()

    # -- the flush (on the event loop) ------------------------------------------------------

    def _arm(self) -> None:
        with self._mutex:
            if self._armed:
                return
            self._armed = True
        if threading.get_ident() == self._loop_thread:
            self._kick()
        else:
            self._loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name=f"job-{self.job_id}-output")

    async def _run(self) -> None:
        while True:
            with self._mutex:
                new, self._new = self._new, []
                pending, self._pending = self._pending, {}
                self._armed = False
            if not new and not pending:
                return
            writes = [(path, b"".join(p.parts), p.close) for path, p in pending.items()]
            await self._store(new, writes)

    async def _store(self, new: list[OutputStream], writes: list[tuple[str, bytes, bool]]) -> None:
        delay = RETRY_FIRST
        while True:  # J4
            try:
                for stream in new:
                    await self.store.create(
                        stream.path,
                        stream.content_type,
                        ttl=None,
                        expires_at=None,
                        closed=False,
                        body=b"",
                    )
                new = []
                await self.store.append_stored(writes)
                return
            except JobcastError as exc:
                if exc.status_code != 503:
                    logger.error("job %s: its output was refused: %s", self.job_id, exc)
                    return
                logger.warning("job %s: storing its output failed (%s); retrying", self.job_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


async def close_left_open(store: StreamStore, job_id: str) -> None:
    """Close every stream of the job still open under ``jobs/{job_id}/`` (J3), in one commit,
    whoever opened them. Never raises: a job's end never fails on its streams, whatever the
    backend (lifecycle.R6, jobs/reported.R6)."""
    try:
        listed = await store.listing(f"jobs/{job_id}/")
        left = [(info.path, b"", True) for info in listed if not info.closed]
        if left:
            await store.append_stored(left)
    except Exception as exc:
        logger.warning("job %s: could not close its output streams: %s", job_id, exc)
