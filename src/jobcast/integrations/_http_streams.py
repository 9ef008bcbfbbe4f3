"""The HTTP path's output streams: a task's ``stream(...)`` appended to jobcast's Durable
Streams API (``/v1/stream/jobs/{id}/{name}``) with the reporter's service token.

Decisions (cited as T1..T5):

T1. ``write`` never waits and never drops: it frames the chunk and counts it under the
    stream's lock (from any thread) and keeps it pending; if no flush of the stream is under
    way it asks the reporter's loop for one (one thread hop per flush, not per chunk). A
    flush sends everything pending in order, at most ``BATCH_BYTES`` per request (a larger
    chunk alone); what is written meanwhile goes in the next request.
T2. Each writer is an idempotent producer: a ``Producer-Id`` of its own, epoch 0, and
    ``Producer-Seq`` 0, 1, 2... one per append. A request that fails (the network, a 5xx, a
    429) is sent again, the same bytes under the same seq, with backoff, until it is taken:
    an append the server had stored before its answer was lost comes back as a duplicate
    (204), so a retry never stores anything twice and never leaves a gap.
T3. The stream is created (``PUT``) at its first flush, right after ``stream(...)``, so the
    job's snapshot lists it at once; a ``409`` (a stream is there already, closed, say) goes
    on to the append, whose answer decides.
T4. The size is counted at ``write`` against ``JOBCAST_MAX_STREAM_BYTES`` of the worker's
    environment (the servers' setting of the same name): the write that would cross it
    raises :class:`~jobcast.errors.PayloadTooLarge` in the task and nothing of it is kept. A
    4xx answer (the server's limit is lower, the stream was closed or deleted) is logged and
    the stream takes nothing more: sending again would not change it.
T5. ``close`` is sent as the last append with ``Stream-Closed: true``. When the task ends its
    writers here are closed and flushed before the terminal report (a bounded wait; the rest
    goes on in the background), and streams of the job that another process opened (an
    earlier attempt) are found in the job's snapshot and closed too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from jobcast.errors import InvalidInput, PayloadTooLarge
from jobcast.integrations._streams import check_name
from jobcast.outputs.model import is_json, media_type

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("jobcast.integrations")

#: Most bytes one append request carries (T1); the servers' default body limit is 1 MiB.
BATCH_BYTES = 256 * 1024
RETRY_FIRST, RETRY_MAX = 0.1, 5.0


class _Retry(Exception):
    """The request may succeed if sent again."""


class _Refused(Exception):
    """The server refused the request; sending it again would not change that (T4)."""


class HttpStream:
    """One output stream of a running task, appended over HTTP. Safe from any thread."""

    def __init__(
        self, streams: HttpStreams, job_id: str, name: str, content_type: str, limit: int
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.path = f"jobs/{job_id}/{name}"
        self.content_type = content_type
        #: Bytes written so far (framed: a JSON stream counts each message and its comma).
        self.length = 0
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self._streams = streams
        self._limit = limit
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
        if self._json:  # stored as the server stores it: compact JSON and a comma
            try:
                text = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"a JSON stream takes JSON values: {exc}") from None
            return text.encode() + b","
        if isinstance(chunk, str):
            return chunk.encode()
        if isinstance(chunk, bytes | bytearray | memoryview):
            return bytes(chunk)
        raise TypeError(f"write text or bytes to a {self.content_type} stream")

    def _queue(self, data: bytes, *, close: bool) -> None:
        with self._mutex:
            if self.closed:
                if close:
                    return
                raise ValueError(f"output stream {self.name!r} is closed")
            if self.length + len(data) > self._limit:  # T4
                raise PayloadTooLarge(
                    f"output stream {self.name!r} would hold {self.length + len(data)} "
                    f"bytes; the limit is {self._limit} (JOBCAST_MAX_STREAM_BYTES)"
                )
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
        """The next request's chunks and whether it closes; ``None``: nothing left (T1)."""
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

    async def flush(self, client: httpx.AsyncClient, url: str) -> None:
        while (batch := self._take()) is not None:
            parts, close = batch
            if self._refused:
                self._streams.counts["output_dropped"] += len(parts)
                continue
            await self._send(client, url, parts, close)

    async def _send(
        self, client: httpx.AsyncClient, url: str, parts: list[bytes], close: bool
    ) -> None:
        delay, failing = RETRY_FIRST, False
        while True:
            try:
                if not self._created:
                    await self._create(client, url)
                if parts or close:
                    await self._append(client, url, parts, close)
                return
            except _Retry as exc:
                if not failing:  # once per outage, not once per attempt
                    logger.warning("%s: output not stored yet (retrying): %s", self.path, exc)
                failing = True
            except _Refused as exc:
                logger.error("%s: output refused, the stream takes no more: %s", self.path, exc)
                self._refused = True
                self._streams.counts["output_dropped"] += len(parts)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _create(self, client: httpx.AsyncClient, url: str) -> None:  # T3
        response = await _request(
            client, "PUT", url, headers={"content-type": self.content_type}, content=b""
        )
        if response.status_code not in (200, 201, 409):
            raise _Refused(f"{response.status_code} {response.text[:300]}")
        self._created = True

    async def _append(
        self, client: httpx.AsyncClient, url: str, parts: list[bytes], close: bool
    ) -> None:
        headers = {
            "content-type": self.content_type,
            "producer-id": self._producer,
            "producer-epoch": "0",
            "producer-seq": str(self._seq),
        }
        if close:
            headers["stream-closed"] = "true"
        body = b"".join(parts)
        if self._json and body:  # the messages as one array: each one stored as it was
            body = b"[" + body[:-1] + b"]"
        response = await _request(client, "POST", url, headers=headers, content=body)
        if response.status_code not in (200, 204):
            raise _Refused(f"{response.status_code} {response.text[:300]}")
        self._seq += 1  # taken (a 204 may be the duplicate of a lost answer: T2)


async def _request(
    client: httpx.AsyncClient, method: str, url: str, *, headers: dict[str, str], content: bytes
) -> httpx.Response:
    try:
        response = await client.request(method, url, headers=headers, content=content)
    except httpx.HTTPError as exc:
        raise _Retry(repr(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise _Retry(f"{response.status_code} {response.text[:200]}")
    return response


class HttpStreams:
    """The output streams of this process's tasks over HTTP (T1-T5)."""

    def __init__(
        self,
        url: str,
        client: Callable[[], httpx.AsyncClient],
        limit: int,
        end_wait: float,
        counts: collections.Counter[str],
    ) -> None:
        self.url = url
        self.limit = limit
        self.end_wait = end_wait
        self.counts = counts
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mutex = threading.Lock()
        self._jobs: dict[str, dict[str, HttpStream]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def of(self, job_id: str) -> _JobStreams:
        return _JobStreams(self, job_id)

    def open(self, job_id: str, name: str, content_type: str) -> HttpStream:
        check_name(name)
        with self._mutex:
            streams = self._jobs.setdefault(job_id, {})
            stream = streams.get(name)
            if stream is not None:
                if media_type(stream.content_type) != media_type(content_type):
                    raise InvalidInput(f"stream {name!r} is already {stream.content_type}")
                return stream
            stream = streams[name] = HttpStream(self, job_id, name, content_type, self.limit)
        stream.create_soon()
        return stream

    def kick(self, stream: HttpStream) -> None:
        """From any thread: start the stream's flush on the loop, unless one runs (T1)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process ends
                self._loop.call_soon_threadsafe(self._start, stream)

    def _start(self, stream: HttpStream) -> None:
        """On the loop; a flush that just found nothing left is done by now (T1)."""
        if stream.task is None or stream.task.done():
            url = self.url + "/v1/stream/" + quote(stream.path)
            stream.task = asyncio.create_task(stream.flush(self._client(), url))

    async def retrying(self, job_id: str) -> None:
        """Flush the job's streams, open, for the next attempt (``_direct_streams.S4``)."""
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
        mine = {stream.path for stream in streams}
        try:
            await self._close_others(job_id, mine)
        except (httpx.HTTPError, _Retry, _Refused, KeyError, ValueError) as exc:
            logger.warning("job %s: its other output streams were not closed: %s", job_id, exc)

    async def _close_others(self, job_id: str, mine: set[str]) -> None:
        client = self._client()
        response = await client.get(f"{self.url}/api/jobs/{quote(job_id, safe='')}")
        if response.status_code == 404:
            return
        response.raise_for_status()
        for info in response.json().get("streams") or []:
            if info["closed"] or info["path"] in mine:
                continue
            url = self.url + "/v1/stream/" + quote(info["path"])
            closing = await _request(
                client, "POST", url, headers={"stream-closed": "true"}, content=b""
            )
            if closing.status_code not in (200, 204, 409):  # 409: closed meanwhile
                raise _Refused(f"{closing.status_code} {closing.text[:200]}")

    async def _settled(self, job_id: str, streams: list[HttpStream]) -> None:
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
        """At process exit: what is pending gets a last bounded wait; streams stay open."""
        for job_id in list(self._jobs):
            try:
                await self.retrying(job_id)
            except Exception as exc:  # the reporter's client closes in any case
                logger.warning("job %s: its output was not flushed at exit: %s", job_id, exc)


class _JobStreams:
    """One job's streams (``_streams.JobStreams``)."""

    def __init__(self, streams: HttpStreams, job_id: str) -> None:
        self._streams = streams
        self._job_id = job_id

    def open(self, name: str, content_type: str) -> HttpStream:
        return self._streams.open(self._job_id, name, content_type)
