"""A queue task's output streams, written by idempotent producers over a sink: jobcast's
Durable Streams API (``_http_streams.py``) or the deployment's stream store
(``_direct_streams.py``).

Decisions (cited as T1..T6):

T1. ``write`` never waits and never drops: it frames the chunk and counts it under the
    stream's lock (from any thread) and keeps it pending; if no flush of the stream is under
    way it asks the reporter's loop for one (one thread hop per flush, not per chunk). A
    flush sends everything pending in order, at most ``BATCH_BYTES`` per append (a larger
    chunk alone); what is written meanwhile goes in the next append.
T2. Each writer is an idempotent producer (the Durable Streams protocol's): a producer id of
    its own, epoch 0, and seq 0, 1, 2... one per append. An append that fails in a way a
    retry may fix (the network, the store unavailable, a 5xx, a 429) is sent again, the same
    bytes under the same seq, with backoff, until it is taken: an append that was stored
    before its answer was lost comes back as a duplicate, so a retry never stores anything
    twice and never leaves a gap.
T3. The stream is created at its first flush, right after ``stream(...)``, so the job's
    snapshot lists it at once; one already there (created by an earlier attempt, or closed)
    is fine: the append's answer decides.
T4. The size is counted at ``write`` against ``JOBCAST_MAX_STREAM_BYTES`` (the worker's
    environment; the servers' setting of the same name): the write that would cross it
    raises :class:`~jobcast.errors.PayloadTooLarge` in the task and nothing of it is kept.
    An append refused for good (a lower limit where it is stored, the stream closed or
    deleted) is logged, and the stream takes nothing more: sending it again would not help.
T5. ``close`` is sent as the last append, closing. When the task ends its writers here are
    closed and flushed before the terminal report (a wait bounded by the reporter's exit
    wait; what is left goes on in the background), then the job's streams still open that
    another process opened (a pool process a revoke terminated, an RQ work horse that was
    stopped, an earlier attempt) are closed too.
T6. When the task will run again (a retry) its writers are flushed and forgotten, the
    streams left open: the next attempt, here or in another process, appends to them with a
    producer of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import uuid
from typing import Any, Protocol

from jobcast.errors import InvalidInput
from jobcast.integrations._streams import check_name
from jobcast.outputs.model import Producer, check_room, framed_write, is_json, media_type

logger = logging.getLogger("jobcast.integrations")

#: Most bytes one append carries (T1); the servers' default body limit is 1 MiB.
BATCH_BYTES = 256 * 1024
RETRY_FIRST, RETRY_MAX = 0.1, 5.0


class Retry(Exception):
    """The sink did not take the request; sending it again may succeed (T2)."""


class Refused(Exception):
    """The sink refused the request; sending it again would not change that (T4)."""


class Sink(Protocol):
    """Where a task's streams go (on the reporter's loop). Raises :class:`Retry` or
    :class:`Refused`."""

    async def create(self, path: str, content_type: str) -> None:
        """Create the stream, open; one already at ``path`` is not an error (T3)."""
        ...

    async def append(
        self, path: str, body: bytes, content_type: str, producer: Producer, close: bool
    ) -> None:
        """Append ``body`` (a JSON stream's: one array of messages), closing if ``close``; a
        duplicate of an append already taken is taken (T2)."""
        ...

    async def open_streams(self, job_id: str) -> list[str]:
        """The paths of the job's streams that are still open (T5)."""
        ...

    async def close_stream(self, path: str) -> None:
        """Close a stream another producer wrote; closed already is not an error (T5)."""
        ...


class ProducerStream:
    """One output stream of a running task. Safe from any thread."""

    def __init__(self, streams: ProducerStreams, job_id: str, name: str, content_type: str) -> None:
        self.name = name
        self.path = f"jobs/{job_id}/{name}"
        self.content_type = content_type
        #: Bytes written so far (framed: a JSON stream counts each message and its comma).
        self.length = 0
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._streams = streams
        self._json = is_json(content_type)
        self._mutex = threading.Lock()
        self._parts: collections.deque[bytes] = collections.deque()
        self._closing = False  # asked, not sent yet
        self._armed = False
        self._created = False
        self._refused = False
        self._producer = uuid.uuid4().hex  # T2
        self._seq = 0

    def write(self, chunk: str | bytes | Any) -> None:
        """Append ``chunk``: text (``str``) or ``bytes``, or for an ``application/json``
        stream any JSON value (one message). Cheap and non-blocking (T1)."""
        self._queue(self._frame(chunk), close=False)

    def close(self) -> None:
        """Close the stream now (else it closes when the task ends); readers see its end."""
        self._queue(b"", close=True)

    def _frame(self, chunk: Any) -> bytes:
        return framed_write(chunk, self.content_type, as_json=self._json)

    def _queue(self, data: bytes, *, close: bool) -> None:
        with self._mutex:
            if self.closed:
                if close:
                    return
                raise ValueError(f"output stream {self.name!r} is closed")
            check_room(self.name, self.length, len(data), self._streams.limit)  # T4
            self.length += len(data)
            if data:
                self._parts.append(data)
            if close:
                self.closed = self._closing = True
            if self._armed:
                return
            self._armed = True
        self._streams.kick(self)

    def create_soon(self) -> None:
        """Ask for a flush with nothing to append: the stream is created at once (T3)."""
        with self._mutex:
            if self._armed:
                return
            self._armed = True
        self._streams.kick(self)

    # -- the flush (on the reporter's loop) -------------------------------------------------

    def _take(self) -> tuple[list[bytes], bool] | None:
        """The next append's chunks and whether it closes; ``None``: nothing left (T1)."""
        with self._mutex:
            parts: list[bytes] = []
            size = 0
            while self._parts and (not parts or size + len(self._parts[0]) <= BATCH_BYTES):
                part = self._parts.popleft()
                parts.append(part)
                size += len(part)
            close = self._closing and not self._parts
            if close:
                self._closing = False
            if not parts and not close and (self._created or self._refused):
                self._armed = False
                return None
            return parts, close

    async def flush(self, sink: Sink) -> None:
        # No await between the last ``_take`` and the return: a writer that finds the flush
        # unarmed starts a new one, and by then this task is done (``ProducerStreams._start``).
        while (batch := self._take()) is not None:
            parts, close = batch
            if self._refused:
                self._streams.counts["output_dropped"] += len(parts)
                continue
            await self._send(sink, parts, close)

    async def _send(self, sink: Sink, parts: list[bytes], close: bool) -> None:
        body = b"".join(parts)
        if self._json and body:  # the messages as one array: each one stored as it was
            body = b"[" + body[:-1] + b"]"
        delay, failing = RETRY_FIRST, False
        while True:
            try:
                if not self._created:
                    await sink.create(self.path, self.content_type)
                    self._created = True
                if body or close:
                    producer = Producer(self._producer, 0, self._seq)
                    await sink.append(self.path, body, self.content_type, producer, close)
                    self._seq += 1  # taken (maybe as the duplicate of a lost answer: T2)
                return
            except Retry as exc:
                if not failing:  # once per outage, not once per attempt
                    logger.warning("%s: output not stored yet (retrying): %s", self.path, exc)
                failing = True
            except Refused as exc:
                logger.error("%s: output refused, the stream takes no more: %s", self.path, exc)
                self._refused = True
                self._streams.counts["output_dropped"] += len(parts)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class ProducerStreams:
    """The output streams of this process's tasks, into one sink (T1-T6)."""

    def __init__(
        self, sink: Sink, limit: int, end_wait: float, counts: collections.Counter[str]
    ) -> None:
        self.sink = sink
        #: Most bytes one stream may hold (T4).
        self.limit = limit
        self.end_wait = end_wait
        self.counts = counts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mutex = threading.Lock()
        self._jobs: dict[str, dict[str, ProducerStream]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reporter's loop, where every flush runs."""
        self._loop = loop

    def of(self, job_id: str) -> JobProducerStreams:
        return JobProducerStreams(self, job_id)

    def open(self, job_id: str, name: str, content_type: str) -> ProducerStream:
        check_name(name)
        with self._mutex:
            streams = self._jobs.setdefault(job_id, {})
            stream = streams.get(name)
            if stream is not None:
                if media_type(stream.content_type) != media_type(content_type):
                    raise InvalidInput(f"stream {name!r} is already {stream.content_type}")
                return stream
            stream = streams[name] = ProducerStream(self, job_id, name, content_type)
        stream.create_soon()
        return stream

    def kick(self, stream: ProducerStream) -> None:
        """From any thread: start the stream's flush on the loop, unless one runs (T1)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process ends
                self._loop.call_soon_threadsafe(self._start, stream)

    def _start(self, stream: ProducerStream) -> None:
        """On the loop; a flush that just found nothing left is done by now (T1)."""
        if stream.task is None or stream.task.done():
            stream.task = asyncio.create_task(stream.flush(self.sink))

    async def retrying(self, job_id: str) -> None:  # T6
        with self._mutex:
            streams = list(self._jobs.pop(job_id, {}).values())
        await self._settled(job_id, streams)

    async def end(self, job_id: str) -> None:  # T5
        with self._mutex:
            streams = list(self._jobs.pop(job_id, {}).values())
        for stream in streams:
            stream.close()
            self._start(stream)  # now, on this loop: ``_settled`` waits for that flush
        await self._settled(job_id, streams)
        mine = {stream.path for stream in streams}  # they close with their last bytes
        try:
            for path in await self.sink.open_streams(job_id):
                if path not in mine:
                    await self.sink.close_stream(path)
        except Exception as exc:  # the terminal report goes on, whatever happened here
            logger.warning("job %s: its other output streams were not closed: %s", job_id, exc)

    async def _settled(self, job_id: str, streams: list[ProducerStream]) -> None:
        tasks = [stream.task for stream in streams if stream.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.end_wait)
        if pending:
            logger.warning(
                "job %s: its output is not stored yet after %g s; still retrying",
                job_id,
                self.end_wait,
            )

    async def close(self) -> None:
        """At process exit: what is pending gets a last bounded wait. The streams of tasks
        that did not end stay open: another worker may run them again."""
        for job_id in list(self._jobs):
            try:
                await self.retrying(job_id)
            except Exception as exc:  # the reporter's connections close in any case
                logger.warning("job %s: its output was not flushed at exit: %s", job_id, exc)


class JobProducerStreams:
    """One job's streams (``_streams.JobStreams``)."""

    def __init__(self, streams: ProducerStreams, job_id: str) -> None:
        self._streams = streams
        self._job_id = job_id

    def open(self, name: str, content_type: str) -> ProducerStream:
        return self._streams.open(self._job_id, name, content_type)
