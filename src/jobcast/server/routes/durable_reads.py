"""Reading a stream over the Durable Streams protocol: catch-up, long-poll and SSE.

Decisions (cited as R1..R4):

R1. A live read watches the path before it reads (``outputs/store.py``), so an append that
    commits between the read and the wait wakes it; it then reads again from where it was.
R2. ``Stream-Cursor`` is the number of 20 s intervals since 2024-10-09 (the protocol's
    default); a client that echoes a cursor not older than that gets one strictly greater
    (a random 1 s to 1 h ahead), so cached empty answers never repeat.
R3. An SSE response ends after ``stream_sse_seconds`` (the protocol suggests about 60 s, so
    caches can collapse readers); a control event precedes every end but the client's, so a
    client always knows where to resume. Quiet streams get ``: ping`` comments.
R4. Catch-up answers that return data and do not reach the tail never change: they may be
    cached (``private`` unless the path is public). Answers at the tail are ``no-cache``; a
    request with a matching ``If-None-Match`` gets 304 (the ETag varies with closing).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from jobcast.outputs.model import (
    BEGINNING,
    NOW,
    ReadResult,
    bad_request,
    format_offset,
    is_json,
    is_text,
    json_body,
    parse_offset,
)
from jobcast.server.streams.durable_sse import DurableSseResponse, StoredSource, Timing

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

FIRST = asyncio.FIRST_COMPLETED
CURSOR_EPOCH = 1728432000.0  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL = 20


def cursor(client: str | None) -> str:
    """The ``Stream-Cursor`` of a live answer (R2)."""
    current = int((time.time() - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client is None or not client.isdigit() or int(client) < current:
        return str(current)
    jitter = 1 + secrets.randbelow(3600)
    return str(int(client) + max(1, math.ceil(jitter / CURSOR_INTERVAL)))


def start_of(request: Request) -> tuple[int | None, int | None]:
    """``(incarnation, position)`` to read from; ``(None, None)`` is the tail (``now``)."""
    return offset_of(request.query_params.getlist("offset"))


def offset_of(values: list[str]) -> tuple[int | None, int | None]:
    """``start_of`` for the ``offset`` values of any URL (a WebSocket's too)."""
    if len(values) > 1:
        raise bad_request("send one offset")
    text = values[0] if values else BEGINNING
    if text == BEGINNING:
        return None, 0
    if text == NOW:
        return None, None
    return parse_offset(text)


def read_headers(result: ReadResult, extra: dict[str, str]) -> dict[str, str]:
    info = result.info
    headers = {
        "content-type": info.content_type,
        "Stream-Next-Offset": format_offset(info.incarnation, result.end),
        **extra,
    }
    if result.up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    if result.eof:
        headers["Stream-Closed"] = "true"
    return headers


def body_of(result: ReadResult) -> bytes:
    return json_body(result.data) if is_json(result.info.content_type) else result.data


def catch_up(request: Request, result: ReadResult, *, now: bool, public: bool) -> Response:
    """``GET`` without ``live``: what there is, at once."""
    info = result.info
    closed = ":c" if result.eof else ""
    etag = f'"{info.incarnation}:{result.position}:{result.end}{closed}"'
    if now or result.up_to_date:
        cache = "no-store" if now else "no-cache"
    else:
        cache = ("public" if public else "private") + ", max-age=60, stale-while-revalidate=300"
    headers = read_headers(result, {"ETag": etag, "Cache-Control": cache})
    if not now and request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    if now:
        del headers["ETag"]  # the protocol's one GET without an ETag
        return Response(b"[]" if is_json(info.content_type) else b"", 200, headers)
    return Response(body_of(result), 200, headers)


async def long_poll(
    jc: Runtime, request: Request, path: str, incarnation: int | None, position: int | None
) -> Response:
    """``live=long-poll``: data as soon as there is some, else 204 after the timeout."""
    deadline = time.monotonic() + jc.settings.stream_long_poll_seconds
    drained: asyncio.Future[Any] = asyncio.ensure_future(
        jc.hub.drained.wait()
    )  # R3: a shutdown ends the wait
    try:
        while True:
            woken = jc.streams.wakeups.watch(path)  # R1
            try:
                result = await _read(jc, path, incarnation, position)
                incarnation, position = result.info.incarnation, result.position
                remaining = deadline - time.monotonic()
                if result.data or result.info.closed or remaining <= 0 or drained.done():
                    break
                await asyncio.wait([woken, drained], timeout=remaining, return_when=FIRST)
                if not woken.done():
                    break  # the timeout, or a shutdown: answer what the read found
            finally:
                jc.streams.wakeups.forget(path, woken)
    finally:
        drained.cancel()
    extra = {"Cache-Control": "no-cache"}
    if not result.eof:
        extra["Stream-Cursor"] = cursor(request.query_params.get("cursor"))
    headers = read_headers(result, extra)
    if result.data:
        return Response(body_of(result), 200, headers)
    headers["Stream-Up-To-Date"] = "true"
    del headers["content-type"]
    return Response(status_code=204, headers=headers)


async def follow(
    jc: Runtime,
    path: str,
    incarnation: int | None,
    position: int | None,
    lifetime: float,
    release: Callable[[], None],
) -> StoredSource:
    """A live read of ``path`` from the position on (SSE, WebSocket), its first read done:
    errors are raised here, before anything is sent. ``release`` gives the live-read slot
    back, however the read ends (``streams/durable_sse.D5``)."""
    woken = jc.streams.wakeups.watch(path)  # R1
    try:
        first = await _read(jc, path, incarnation, position)
    except BaseException:
        jc.streams.wakeups.forget(path, woken)
        raise
    settings = jc.settings
    timing = Timing(settings.heartbeat_interval, lifetime, settings.send_timeout)
    return StoredSource(jc.streams, path, first, woken, timing, release, jc.hub.drained)


async def open_sse(
    jc: Runtime,
    request: Request,
    path: str,
    incarnation: int | None,
    position: int | None,
    release: Callable[[], None],
) -> Response:
    """``live=sse``: ``data`` and ``control`` events, live, until R3's end or the close, on
    the one stream writer (``streams/durable_sse.py``)."""
    lifetime = jc.settings.stream_sse_seconds
    source = await follow(jc, path, incarnation, position, lifetime, release)
    content_type = source.content_type
    headers = {
        "content-type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer a live response
    }
    if not is_text(content_type):
        headers["stream-sse-data-encoding"] = "base64"
    client_cursor = request.query_params.get("cursor")
    return DurableSseResponse(source, headers, content_type, client_cursor, cursor)


async def _read(
    jc: Runtime, path: str, incarnation: int | None, position: int | None
) -> ReadResult:
    return await jc.streams.read(path, incarnation, position)
