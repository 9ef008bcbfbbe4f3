"""Open SSE streams carried by the connection itself, without an ASGI task, under ``jobcast serve``.

An ASGI response lives in a task: uvicorn's request cycle, the app's frames down to the
response's own, and a second task waiting on ``receive()`` to learn of a disconnect. For an
idle stream that is more than half of what it costs (measured: a trivial ASGI stream on
uvicorn holds 10 KB, the same stream written from its protocol 4.8 KB). ``jobcast serve``
therefore runs uvicorn with :class:`StreamProtocol`, its httptools protocol plus one ability:
taking over a stream once it is open.

Decisions (cited as N1..N4):

N1. Opening stays ASGI. The fast entrance (``fast_paths.py``) authenticates, subscribes and
    replays exactly as on any server, and answers every refusal through ASGI; only a stream
    that is open is handed over, through the scope extension ``jobcast.native_stream``. Without
    the extension (another server, a test client), or with a pipelined request already parsed
    behind it, the same response runs as ASGI.
N2. The status line, headers and opening frames (``retry:``, snapshot, replay) go out in one
    write, with uvicorn's default headers and chunked encoding as uvicorn writes them. A
    publish's answer, too, is one write of head and body (``reply``), where uvicorn makes two:
    on loopback each write costs the sender the receiver's TCP work as well.
N3. Writes are callbacks: the subscription's waiter future calls the writer back (a burst is one
    wake-up, as in sse.py E1/E2), the transport's flow control pauses it, and ``resume_writing``
    continues it. A paused writer is marked as writing, so the hub's ticker ends a stuck one
    (hub.H6) by aborting its connection.
N4. The end is uvicorn's: a closing frame when the stream did not end by itself (sse.py E4),
    the last chunk, then keep-alive (the connection serves its next request) or close. Bytes
    a client sends while its stream is open (a pipelined request) wait for that end.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from jobcast.server.fast_streams import NATIVE_STREAM
from jobcast.server.request_heads import HeadGuardProtocol
from jobcast.server.sse import EventStreamResponse
from jobcast.subscription import CloseReason

LAST_CHUNK = b"0\r\n\r\n"


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


class StreamProtocol(HeadGuardProtocol):  # request heads: deadline, URL limit (request_heads)
    """uvicorn's httptools protocol, able to carry an open SSE stream by itself (N1)."""

    stream: NativeStream | None = None
    held = b""  # what the client sent while its stream was open (N4)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The ASGI spec types extensions as dicts of dicts; this one is the connection.
        self.scope["extensions"] = {NATIVE_STREAM: self}  # type: ignore[dict-item]

    def adopt(self, scope: MutableMapping[str, Any], response: EventStreamResponse) -> bool:
        """Carry ``response`` from now on, so the ASGI task that opened it may return; false
        when the request's body has not all arrived or another request came in the same
        packet (pipelined): uvicorn keeps those in order."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope or cycle.more_body or self.pipeline:
            return False
        self._log_access(cycle, 200)
        head = self._head(cycle, 200, response.raw_headers) + b"transfer-encoding: chunked\r\n\r\n"
        # The cycle's task ends now: its checks must see a complete response. The protocol
        # lets go of the cycle, the scope and the headers (the stream needs none of them).
        cycle.response_started = cycle.response_complete = True
        stream = self.stream = NativeStream(self, response, keep_alive=cycle.keep_alive)
        self.cycle = self.scope = self.headers = None  # type: ignore[assignment]
        stream.start(head)
        return True

    def reply(self, scope: MutableMapping[str, Any], response: Response) -> bool:
        """Write a whole small response (a publish's answer) in one write, as uvicorn's ``send``
        would in two; false when it is not this connection's current request (N2)."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope or cycle.response_started:
            return False
        self._log_access(cycle, response.status_code)
        head = self._head(cycle, response.status_code, response.raw_headers)
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self.transport.write(head + b"\r\n" + response.body)
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
        return True

    @staticmethod
    def _head(
        cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        lines = [STATUS_LINE[status]]
        lines += [b"%b: %b\r\n" % header for header in cycle.default_headers]
        lines += [b"%b: %b\r\n" % header for header in headers]
        if not cycle.keep_alive:
            lines.append(b"connection: close\r\n")
        return b"".join(lines)

    @staticmethod
    def _log_access(cycle: RequestResponseCycle, status: int) -> None:
        if cycle.access_log:
            scope = cycle.scope
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )

    def ended(self, reusable: bool) -> None:
        """The stream is over (N4): serve the connection's next request, or close it."""
        self.stream = None
        if not reusable or self.transport.is_closing():
            self.transport.close()
            return
        self.on_response_complete()
        held, self.held = self.held, b""
        if held:
            super().data_received(held)

    # -- the transport's callbacks, while a stream is open -------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.stream is None:
            super().data_received(data)
            return
        self.held += data  # a pipelined request: answered after the stream (N4)
        self.flow.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stream is not None:
            self.stream.resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.stream is not None:
            self.stream.lost()

    def shutdown(self) -> None:
        if self.stream is None:
            super().shutdown()
            return
        self.stream.keep_alive = False
        self.stream.subscription.close(CloseReason.DRAIN)  # the hub has drained it already


class NativeStream:
    """Writes one subscription to its connection from callbacks (N3)."""

    __slots__ = ("blocked", "ended", "keep_alive", "protocol", "response", "subscription")

    def __init__(
        self, protocol: StreamProtocol, response: EventStreamResponse, *, keep_alive: bool
    ) -> None:
        self.protocol = protocol
        self.response = response
        self.subscription = response.subscription
        self.keep_alive = keep_alive
        self.blocked = False  # waiting for the transport to drain
        self.ended = False

    def start(self, head: bytes) -> None:
        self.subscription.writer = self
        opening, finished = self.response.opening()
        self.protocol.transport.write(head + chunk(opening))  # N2
        if finished:
            self._end(finished=True)
            return
        self._block_if_paused()
        self._proceed()

    def _proceed(self, _: Any = None) -> None:
        """Write what is pending, then wait for more, for the transport, or for the end."""
        subscription, response = self.subscription, self.response
        while not self.ended and not self.blocked:
            if subscription.close_reason is not None:
                self._end(finished=False)
                return
            waiter = subscription.waiter()
            if waiter is not None:
                waiter.add_done_callback(self._proceed)
                return
            body, first_ts, finished = response.next_chunk()
            if body:
                self.protocol.transport.write(chunk(body))
                response.written(first_ts)
            if finished:
                self._end(finished=True)
                return
            if body:
                self._block_if_paused()

    def _block_if_paused(self) -> None:
        if self.protocol.flow.write_paused:  # the client reads slower than we write
            self.blocked = True
            self.subscription.writing_since = time.monotonic()  # hub.H6 ends it if it stays

    def resumed(self) -> None:
        if self.blocked:
            self.blocked = False
            self.subscription.writing_since = 0.0
            self._proceed()

    def lost(self) -> None:
        self.subscription.close(CloseReason.CLIENT)
        self._end(finished=False)

    def cancel(self) -> None:
        """The hub gave up on a write the client does not read (hub.H6)."""
        self.protocol.transport.abort()
        self._end(finished=False)

    def _end(self, *, finished: bool) -> None:
        if self.ended:
            return
        self.ended = True
        subscription, response, protocol = self.subscription, self.response, self.protocol
        subscription.writer = None
        subscription.writing_since = 0.0
        reason = subscription.close_reason
        transport = protocol.transport
        reusable = False
        if not transport.is_closing():
            if finished:
                transport.write(LAST_CHUNK)
                reusable = self.keep_alive
            elif reason is not None and reason is not CloseReason.CLIENT:
                transport.write(chunk(response.closing_frame(reason)) + LAST_CHUNK)
                reusable = self.keep_alive
        response.on_close(subscription)
        protocol.ended(reusable)
