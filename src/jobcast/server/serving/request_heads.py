"""The request head at the connection, under ``jobcast serve``: how long it may take to arrive,
how long its URL may be, and JSON for what the HTTP parser refuses.

uvicorn's httptools protocol waits for a request's head for as long as the client likes (500
sockets sending one byte a second were held indefinitely), and answers what the parser refuses
with a plain-text 400, including a URL longer than the parser can split (65,535 bytes). These
are answered below the app, so this is a base of ``native_streams.StreamProtocol``.

Decisions (cited as R1..R4):

R1. One timer per connection, and only while a request's head is incomplete: armed when the
    connection opens and when a later request's first byte arrives (uvicorn's keep-alive
    timeout covers the wait between requests), cancelled when the request is complete or the
    first byte of its body arrives. So it bounds the head and the wait for a body's first byte
    together; a request that expects ``100-continue`` is exempt once its head is in (its body
    waits for us). A normal request costs one ``call_later`` and one ``cancel``.
R2. At the deadline the connection is closed and counted, by phase: ``idle`` (nothing was
    sent), ``headers`` (the head was incomplete: answered 408 first, as nginx does) or
    ``body`` (the head was in, the body never started: the app is already answering, so no
    second response, just the close). A 408 is never written into a previous request's
    response still under way on the same connection.
R3. A URL over :data:`MAX_URL_BYTES` is refused as soon as it is, not after the whole head was
    buffered: 414. The limit is the parser's own (it cannot split a longer one), so nothing
    that was served before is refused now.
R4. Refusals have jobcast's JSON body (``{"error", "message"}``, as ``errors.py`` writes it)
    and end the connection, since what follows in it cannot be trusted to be a request. The
    end lingers, as nginx's does: our side is shut for writing and what the client still
    sends is read and dropped until it closes (or :data:`LINGER_SECONDS` pass). Closing with
    unread bytes (the rest of a 100 KB URL) would reset the connection, and a reset can
    discard the refusal before the client read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

#: httptools cannot split a longer URL into path and query (R3).
MAX_URL_BYTES = 65_535
DEFAULT_HEADER_TIMEOUT = 10.0
#: How long a refused connection is read (and dropped) before it is closed anyway (R4).
LINGER_SECONDS = 2.0

Phase = Literal["idle", "headers", "body"]


class UrlTooLong(Exception):
    """Raised from the parser's callback to stop parsing a URL past the limit (R3)."""


class _Discard:
    """Stands in for the parser of a refused connection: what arrives is dropped (R4)."""

    @staticmethod
    def feed_data(data: bytes) -> None:
        pass


class HeadGuardProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request heads and JSON refusals."""

    #: Seconds a request's head (and its body's first byte) may take (R1).
    header_timeout: ClassVar[float] = DEFAULT_HEADER_TIMEOUT
    #: Each is called with the phase of every connection closed at the deadline (R2).
    on_timeout: ClassVar[tuple[Callable[[Phase], None], ...]] = ()

    # Slots, not instance attributes: uvicorn's protocol already holds 28 attributes, and
    # CPython shares a class's instance-dict keys only up to 30 of them; past that every
    # connection's dict is its own (about 1.3 KB more per open stream, measured).
    __slots__ = ("_deadline", "_phase", "_url_too_long")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase = "idle"
        self._url_too_long = False

    @classmethod
    def configured(
        cls, header_timeout: float, on_timeout: Callable[[Phase], None] | None
    ) -> type[HeadGuardProtocol]:
        """This protocol class with one server's settings (uvicorn builds it from the class)."""
        observers = () if on_timeout is None else (on_timeout,)
        attributes = {"header_timeout": header_timeout, "on_timeout": observers}
        return cast(type[HeadGuardProtocol], type(cls.__name__, (cls,), attributes))

    # -- the deadline (R1, R2) ---------------------------------------------------------------

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        for observe in self.on_timeout:
            observe(self._phase)
        if self._phase == "headers" and (self.cycle is None or self.cycle.response_complete):
            seconds = f"{self.header_timeout:g}"
            self._refuse(408, "request_timeout", f"the request took over {seconds} s to arrive")
        else:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = "idle"
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"
        self._url_too_long = False
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._phase = "body"
        if self.expect_100_continue:
            self._disarm()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._deadline is not None:
            self._disarm()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    # -- refusals (R3, R4) -------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._url_too_long = True
            raise UrlTooLong

    def send_400_response(self, msg: str) -> None:
        """What uvicorn calls for anything the parser refuses."""
        self._disarm()
        if self._url_too_long:
            self._refuse(
                414,
                "url_too_long",
                f"the URL is over {MAX_URL_BYTES} bytes: send credentials in the "
                "Authorization header and fewer or shorter parameters",
            )
        else:
            self._refuse(400, "bad_request", "this is not a valid HTTP/1.1 request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        body = orjson.dumps({"error": code, "message": message})
        head = [STATUS_LINE[status]]
        head += [b"%b: %b\r\n" % header for header in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        transport = self.transport
        transport.write(b"".join(head) + body)
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self.parser = _Discard()  # type: ignore[assignment]
        # The transport closes itself when the client's end arrives (eof_received is falsy).
        self.loop.call_later(LINGER_SECONDS, transport.close)
