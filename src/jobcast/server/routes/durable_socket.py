"""``/ws/stream/{path}?offset=``: a stream read live over a WebSocket, resumable by offset.

The same read as ``GET /v1/stream/{path}?live=sse`` (``durable_reads.follow``, the one stream
writer, ``streams/durable_sse.py``) as JSON text messages:

- ``{"op": "data", "data": "...", "offset": "...", "up_to_date": true}`` for the bytes written
  since the last message: text for text streams, the messages (a list) for
  ``application/json`` streams, base64 for any other type (``"encoding": "base64"``).
  ``offset`` is where the next message starts: a client that reconnects with
  ``?offset=<it>`` misses nothing and repeats nothing.
- ``{"op": "closed", "offset": "..."}`` once a closed stream was read to its end, then close
  1000; ``{"op": "ping"}`` while the stream is quiet.
- ``{"op": "error", ...}`` then the close codes of ``streams/channel.py``: 4404 no stream,
  4401/4403 no right to read it (a job's stream needs the right to watch the job), 4400 a
  bad offset, 4410 data no longer kept, 1012 the server restarts or the stream reached
  ``JOBCAST_MAX_STREAM_SECONDS`` (reconnect with the last offset).

Decisions (cited as S1..S2):

S1. The socket authenticates as jobcast's other sockets do (``?token=``, a ticket, a header
    or a first ``{"op": "auth"}`` message), except below a public prefix, where it does not
    wait for a first message. It holds a live-read slot like an SSE read.
S2. One wake-up, one message (writer.C2): a data message carries everything pending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket

from jobcast.auth import Principal
from jobcast.errors import JobcastError
from jobcast.outputs.model import ReadResult, format_offset, is_json, is_text, json_body
from jobcast.server.routes import durable_access as access
from jobcast.server.routes.durable_reads import follow, offset_of
from jobcast.server.streams.channel import (
    CLOSE_NORMAL,
    PING,
    Caller,
    Channel,
    SocketClosed,
    accept_from_allowed_origin,
    error_message,
)
from jobcast.server.streams.durable_sse import StoredSource, holding
from jobcast.server.streams.job_socket import SocketSink
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

PATH = "/ws/stream/{path:path}"


async def serve_stream_socket(
    jc: Runtime, websocket: WebSocket, raw_path: str, caller: Caller | None = None
) -> None:
    """Accept, authenticate (S1), then write the stream from ``?offset=`` until it closes."""
    with jc.metrics.websocket():
        if not await accept_from_allowed_origin(jc.settings, websocket):
            return
        channel = Channel(jc, websocket)
        try:
            path = access.stream_path(raw_path)
            if caller is not None:
                principal = caller.principal
            elif access.is_public(jc, path):  # S1: nothing to wait for
                principal = await jc.credentials.resolve(websocket)
            else:
                principal, _ = await channel.authenticate(required=True)
            await access.check_read(jc, principal, path)
            incarnation, position = offset_of(websocket.query_params.getlist("offset"))
            source = await _follow(jc, principal, path, incarnation, position)
        except JobcastError as exc:
            await channel.fail(exc)
            return
        except SocketClosed:
            return
        sink = StreamSocketSink(channel, source)
        writer = StreamWriter(source, StreamSocketFraming(source), sink, on_close=source.release)
        reader = asyncio.create_task(_watch_incoming(channel, source))
        try:
            await sink.run(writer)
        finally:
            source.release()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _follow(
    jc: Runtime,
    principal: Principal | None,
    path: str,
    incarnation: int | None,
    position: int | None,
) -> StoredSource:
    hold = jc.stream_reads.hold(principal.subject if principal else "")
    hold.__enter__()  # left when the socket ends (durable_sse.D5)
    try:
        lifetime = jc.settings.max_stream_seconds or float("inf")
        return await follow(jc, path, incarnation, position, lifetime, holding(hold))
    except BaseException:
        hold.__exit__(None, None, None)
        raise


class StreamSocketFraming:
    """A stream's reads as WebSocket messages (``writer.Framing``; S2)."""

    def __init__(self, source: StoredSource) -> None:
        content_type = source.content_type
        self._json = is_json(content_type)
        self._text = is_text(content_type)
        self.offset = ""
        self.final: Callable[[ReadResult], bool] | None = _eof

    def opening(self) -> tuple[list[str], bool]:
        return [], False

    def frames(self, results: list[ReadResult]) -> list[str]:
        if not results:
            return []
        last = results[-1]
        data = b"".join([result.data for result in results])
        self.offset = format_offset(last.info.incarnation, last.end)
        messages = []
        if data or last.up_to_date:
            message: dict[str, Any] = {"op": "data", "offset": self.offset}
            if data:
                if self._json:
                    message["data"] = orjson.Fragment(json_body(data))
                elif self._text:
                    message["data"] = data.decode(errors="replace")
                else:
                    message["data"] = base64.b64encode(data).decode()
                    message["encoding"] = "base64"
            if last.up_to_date:
                message["up_to_date"] = True
            messages.append(orjson.dumps(message).decode())
        if last.eof:
            messages.append(orjson.dumps({"op": "closed", "offset": self.offset}).decode())
        return messages

    def heartbeat(self) -> list[str]:
        return [PING]

    def closing(self, reason: CloseReason) -> list[str]:
        text = f"stream ended: {reason.value}; reconnect with ?offset=<the last offset>"
        return [error_message(text, offset=self.offset)]


class StreamSocketSink(SocketSink):
    """The socket as the read's sink: close 1000 once a closed stream was read to its end."""

    async def finish(self, closing: list[str] | None, reason: CloseReason | None) -> None:
        if reason is None:
            await self.channel.close(CLOSE_NORMAL, "stream closed")
            return
        await super().finish(closing, reason)


async def _watch_incoming(channel: Channel, source: StoredSource) -> None:
    """Read (and drop) what the client sends, to notice it leaving or flooding."""
    with contextlib.suppress(SocketClosed):
        while True:
            await channel.receive()
    source.close(CloseReason.CLIENT)


def _eof(result: ReadResult) -> bool:
    return result.eof
