"""Open SSE streams carried by the connection itself, without an ASGI task, under ``jobcast serve``
(event streams, and Durable Streams SSE reads: ``streams/durable_sse.py``).

An ASGI response lives in a task: uvicorn's request cycle, the app's frames down to the
response's own, and a second task waiting on ``receive()`` to learn of a disconnect. For an
idle stream that is more than half of what it costs (measured: a trivial ASGI stream on
uvicorn holds 10 KB, the same stream written from its protocol 4.8 KB). ``jobcast serve``
therefore runs uvicorn with :class:`StreamProtocol`, its httptools protocol plus one ability:
taking over a stream once it is open.

Decisions (cited as N1..N6):

N1. Opening stays ASGI. The fast entrance (``fast_paths.py``) authenticates, subscribes and
    replays exactly as on any server, and answers every refusal through ASGI; only a stream
    that is open is handed over, through the scope extension ``jobcast.native_stream``. Without
    the extension (another server, a test client), or with a pipelined request already parsed
    behind it, the same response runs as ASGI.
N2. The status line, headers and opening frames (``retry:``, snapshot, replay) go out in one
    write, with uvicorn's default headers and chunked encoding as uvicorn writes them. A
    publish's answer, too, is one write of head and body (``reply``), where uvicorn makes two:
    on loopback each write costs the sender the receiver's TCP work as well.
N3. The stream's writer is the one every stream has (``streams/writer.py``); this connection is
    its sink (:class:`ConnectionSink`): a write goes into the transport at once, the
    transport's flow control pauses the writer, and ``resume_writing`` continues it. A paused
    writer is marked as writing, so the hub's ticker ends a stuck one (hub.H6) by aborting
    its connection.
N4. The end is uvicorn's: a closing frame when the stream did not end by itself (sse.py E4),
    the last chunk, then keep-alive (the connection serves its next request) or close. Bytes
    a client sends while its stream is open (a pipelined request) wait for that end.
N5. A plain publish that needs no waiting is answered here too, without an ASGI request
    (``instant_writes.py``): the request is held until its body is in, then answered in
    the parser's callback, or started as the ASGI request it would have been.
N6. While a stream is open the connection keeps only what the stream uses. The HTTP parser
    (about 900 bytes with the callbacks it binds), the empty pipeline queue and the flow
    control's event (a deque each, about 750 bytes), and the two socket addresses are
    dropped when it is adopted, and made again, as uvicorn makes them, when it ends on a
    connection that serves another request: an idle stream is mostly connections, and this
    was a third of one. A stream is adopted only when nothing of a next request was parsed.
    The response's headers, once written, are let go of too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httptools
from starlette.responses import Response
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import (
    get_client_addr,
    get_local_addr,
    get_path_with_query_string,
    get_remote_addr,
)

from jobcast.server.serving.fast_streams import NATIVE_STREAM, Carried
from jobcast.server.serving.request_heads import HeadGuardProtocol
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason

if TYPE_CHECKING:
    from starlette.types import Scope

    from jobcast.server.serving.instant_writes import InstantWrites

LAST_CHUNK = b"0\r\n\r\n"

#: What this module uses of uvicorn's protocol and request cycle, beyond their public role: the
#: methods it overrides or calls, and the state it reads or sets (checked by ``unsupported``).
_PROTOCOL_METHODS = (
    "on_message_begin",
    "data_received",
    "resume_writing",
    "connection_lost",
    "shutdown",
    "on_response_complete",
    "on_message_complete",
    "_start_asgi_task",
)
_PROTOCOL_STATE = (
    "cycle",
    "pipeline",
    "flow",
    "transport",
    "scope",
    "headers",
    "parser",
    "server",
    "client",
)
_CYCLE_STATE = (
    "more_body",
    "body",
    "waiting_for_100_continue",
    "keep_alive",
    "response_started",
    "response_complete",
    "message_event",
    "default_headers",
    "access_log",
    "access_logger",
    "on_response",
    "scope",
)


def unsupported() -> str | None:
    """What the installed uvicorn lacks of what :class:`StreamProtocol` relies on, or ``None``.

    Methods are looked up on the class; state, among the attribute names its methods assign
    or read (their code's names), so the check needs no connection."""
    for name in _PROTOCOL_METHODS:
        if not callable(getattr(HttpToolsProtocol, name, None)):
            return f"HttpToolsProtocol.{name}"
    for cls, wanted in ((HttpToolsProtocol, _PROTOCOL_STATE), (RequestResponseCycle, _CYCLE_STATE)):
        names: set[str] = set()
        for klass in cls.__mro__:
            for value in vars(klass).values():
                code = getattr(value, "__code__", None)
                if code is not None:
                    names.update(code.co_names)
        for name in wanted:
            if name not in names:
                return f"{cls.__name__}.{name}"
    if 200 not in STATUS_LINE:
        return "STATUS_LINE"
    return None


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


class StreamProtocol(HeadGuardProtocol):  # request heads: deadline, URL limit (request_heads)
    """uvicorn's httptools protocol, able to carry an open SSE stream by itself (N1)."""

    __slots__ = ("held", "stream", "waiting")  # the connection's dict stays shared (request_heads)

    #: The publishes this server answers without an ASGI request (N5), if any.
    instant: ClassVar[InstantWrites | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream: StreamWriter[Any, bytes] | None = None
        self.held = b""  # what the client sent while its stream was open (N4)
        #: A publish held until its body is in (N5), and the app it would go to.
        self.waiting: tuple[RequestResponseCycle, Any] | None = None

    @classmethod
    def answering(cls, instant: InstantWrites) -> type[StreamProtocol]:
        """This protocol class, answering ``instant``'s publishes itself (N5)."""
        return cast(type[StreamProtocol], type(cls.__name__, (cls,), {"instant": instant}))

    # -- publishes answered without an ASGI request (N5) ---------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        instant = self.instant
        if (
            instant is not None
            and not cycle.waiting_for_100_continue  # its body waits for the app to read
            and instant.takes(cast("Scope", cycle.scope))
        ):
            if cycle.more_body:
                self.waiting = (cycle, app)  # answered once the body is in
                return
            if self._answer_instantly(instant, cycle):
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        waiting = self.waiting
        if waiting is not None and waiting[0] is self.cycle and self.instant is not None:
            self.waiting = None
            cycle, app = waiting
            if not self._answer_instantly(self.instant, cycle):
                super()._start_asgi_task(cycle, app)

    def _answer_instantly(self, instant: InstantWrites, cycle: RequestResponseCycle) -> bool:
        return instant.answer(
            cast("Scope", cycle.scope),  # uvicorn's typed dict, the same mapping
            bytes(cycle.body),
            lambda response: self._write_reply(cycle, response),
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The ASGI spec types extensions as dicts of dicts; this one is the connection.
        self.scope["extensions"] = {NATIVE_STREAM: self}  # type: ignore[dict-item]

    def adopt(self, scope: MutableMapping[str, Any], response: Carried) -> bool:
        """Carry ``response`` from now on, so the ASGI task that opened it may return; false
        when the request's body has not all arrived or another request, or the start of one,
        came in the same packet (pipelined): uvicorn keeps those in order."""
        cycle = self.cycle
        if (
            cycle is None
            or cycle.scope is not scope
            or cycle.more_body
            or self.pipeline
            or self.scope is not scope  # a next request's head began in the same packet (N6)
        ):
            return False
        self._log_access(cycle, 200)
        head = self._head(cycle, 200, response.raw_headers) + b"transfer-encoding: chunked\r\n\r\n"
        response.raw_headers.clear()  # written: the open stream holds none of them (N6)
        # The cycle's task ends now: its checks must see a complete response. The protocol
        # lets go of the cycle, the scope and the headers (the stream needs none of them).
        cycle.response_started = cycle.response_complete = True
        sink = ConnectionSink(self, head, keep_alive=cycle.keep_alive)
        stream = self.stream = response.writer(sink)
        self.cycle = self.scope = self.headers = None  # type: ignore[assignment]
        self._lean()
        stream.start()
        return True

    def _lean(self) -> None:
        """Let go of what an open stream does not use (N6); :meth:`_restore` makes it again."""
        self.parser = self.pipeline = None  # type: ignore[assignment]
        self.server = self.client = None
        flow = self.flow
        self.flow = StreamFlow(self.transport)  # type: ignore[assignment]
        self.flow.read_paused, self.flow.write_paused = flow.read_paused, flow.write_paused

    def _restore(self) -> None:
        """The connection's state for its next request, as uvicorn makes it (N6)."""
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        self.pipeline = deque()
        transport = self.transport
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        lean, flow = self.flow, FlowControl(transport)
        flow.read_paused = lean.read_paused
        if lean.write_paused:
            flow.pause_writing()
        self.flow = flow

    def reply(self, scope: MutableMapping[str, Any], response: Response) -> bool:
        """Write a whole small response (a publish's answer) in one write, as uvicorn's ``send``
        would in two; false when it is not this connection's current request (N2)."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope or cycle.response_started:
            return False
        self._write_reply(cycle, response)
        return True

    def _write_reply(self, cycle: RequestResponseCycle, response: Response) -> None:
        self._log_access(cycle, response.status_code)
        head = self._head(cycle, response.status_code, response.raw_headers)
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self.transport.write(head + b"\r\n" + response.body)
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

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
        self._restore()
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
        self.waiting = None
        if self.stream is not None:
            self.stream.lost()

    def shutdown(self) -> None:
        if self.stream is None:
            super().shutdown()
            return
        sink = self.stream.sink
        if isinstance(sink, ConnectionSink):
            sink.keep_alive = False
        self.stream.subscription.close(CloseReason.DRAIN)  # the hub has drained it already


class StreamFlow:
    """The flow control of a connection that carries a stream (N6): uvicorn's without the
    event an ASGI ``send`` waits on, since nothing does."""

    __slots__ = ("read_paused", "transport", "write_paused")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.read_paused = False
        self.write_paused = False

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False


class ConnectionSink:
    """The connection as a stream's sink (N2-N4): chunked writes into the transport."""

    __slots__ = ("head", "keep_alive", "protocol")

    def __init__(self, protocol: StreamProtocol, head: bytes, *, keep_alive: bool) -> None:
        self.protocol = protocol
        #: The status line and headers, written with the first chunk (N2).
        self.head = head
        self.keep_alive = keep_alive

    def write(self, body: bytes) -> bool:
        protocol = self.protocol
        head, self.head = self.head, b""
        protocol.transport.write(head + chunk(body))
        return not protocol.flow.write_paused  # the client reads slower than we write (N3)

    def end(
        self, closing: bytes | None, reason: CloseReason | None, done: Callable[[], None]
    ) -> None:
        protocol = self.protocol
        transport = protocol.transport
        reusable = False
        if not transport.is_closing():
            if reason is None:
                transport.write(self.head + LAST_CHUNK)
                reusable = self.keep_alive
            elif reason is not CloseReason.CLIENT:
                # an empty closing would be a last chunk of its own (the stream ends twice)
                transport.write(self.head + (chunk(closing) if closing else b"") + LAST_CHUNK)
                reusable = self.keep_alive
        done()
        protocol.ended(reusable)

    def abort(self) -> None:
        self.protocol.transport.abort()
