"""Reading a job's output stream (``/v1/stream/jobs/{id}/{name}``): the I/O-free core.

The twins (``read_stream`` of ``Client`` and ``AsyncClient``) long-poll the stream: each answer
carries ``Stream-Next-Offset``, the next request asks from there, so a reconnect (a dropped
connection, a server restart) continues at the exact byte; the read ends at
``Stream-Closed``. Decisions (cited as S1..S4):

S1. Text is decoded with an incremental UTF-8 decoder, so a character split between two answers
    is never mangled; ``application/json`` streams yield their messages, other types bytes.
S2. A 404 before the stream exists is the job not having opened it yet: the reader asks the
    job and waits for it (with the reconnect policy's backoff) unless the job already ended,
    in which case there is nothing to read.
S3. ``offset`` is public: save it and pass it back to a later ``read_stream`` to resume where a
    previous reader (another process, say) stopped.
S4. ``transport="ws"`` reads the same stream over ``/ws/stream/{path}?offset=`` (``_sockets``):
    every data message carries the offset where the next one starts, so a socket cut off
    (the server's ``JOBCAST_MAX_STREAM_SECONDS``, a restart's 1012, a network fault) is
    reopened at that offset with backoff, missing and repeating nothing. A close
    ``4000 + status`` is that HTTP status and raises the same typed error as over HTTP
    (4410: ``HTTPStatusError`` 410 ``gone``), except 4404 before the stream was seen (S2).
    The socket does not name the content type; the data's shape does (text, a list of
    messages, base64).
"""

from __future__ import annotations

import base64
import codecs
import enum
import json
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx

from jobcast.client._errors import ConnectionFailed, ProtocolError, typed_error

BEGINNING = "-1"

#: How ``read_stream`` reads: HTTP long-polls (the default), or a WebSocket (S4).
OutputTransport = Literal["http", "ws"]


def check_transport(transport: str) -> str:
    """``transport`` if it is one ``read_stream`` knows; else ``ValueError``, before any I/O."""
    if transport not in ("http", "ws"):
        raise ValueError(f"transport is 'http' or 'ws', not {transport!r}")
    return transport


class OutputReading:
    """Where one read of an output stream is: its offset, its decoder, whether it ended."""

    def __init__(self, job_id: str, name: str, offset: str = BEGINNING, live: bool = True) -> None:
        self.job_id = job_id
        stream = f"jobs/{quote(job_id, safe='')}/{quote(name, safe='')}"
        self.path = f"/v1/stream/{stream}"
        self._socket_path = f"/ws/stream/{stream}"
        #: The offset the next request reads from (S3).
        self.offset = offset
        self.live = live
        #: Whether the stream ended (closed and read to its end, or caught up without ``live``).
        self.done = False
        #: Whether the stream was seen to exist (a 404 afterwards is its deletion).
        self.opened = False
        self.content_type = ""
        self._text = codecs.getincrementaldecoder("utf-8")()
        #: Whether the current socket delivered a data message (its reconnect is no failure).
        self.delivered = False
        self._refusal: dict[str, Any] = {}

    def not_open_yet(self, response: httpx.Response) -> bool:
        """Whether ``response`` is the 404 of a stream the job has not opened yet (S2)."""
        return response.status_code == 404 and not self.opened

    def params(self) -> dict[str, str]:
        params = {"offset": self.offset}
        if self.live:
            params["live"] = "long-poll"
        return params

    def accept(self, response: httpx.Response) -> list[Any]:
        """The items of a successful answer; advances the offset."""
        self.opened = True
        headers = response.headers
        self.offset = headers.get("stream-next-offset", self.offset)
        if headers.get("stream-closed") == "true" or (
            not self.live and headers.get("stream-up-to-date") == "true"
        ):
            self.done = True
        if response.status_code == 204 or not response.content:
            return []
        self.content_type = headers.get("content-type", self.content_type)
        kind = self.content_type.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            items: list[Any] = json.loads(response.content)
            return items
        if kind.startswith("text/"):  # S1
            text = self._text.decode(response.content, final=self.done)
            return [text] if text else []
        return [response.content]

    # -- over a WebSocket (S4) --------------------------------------------------------------

    def socket_target(self) -> str:
        """The path and query of the next socket: the stream, from the current offset."""
        self.delivered = False
        self._refusal = {}
        return f"{self._socket_path}?{urlencode({'offset': self.offset})}"

    def receive(self, text: str | bytes) -> list[Any]:
        """The items of one socket message; advances the offset, notes the end and refusals."""
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise ProtocolError("the stream socket sent a message that is not a JSON object")
        op = message.get("op")
        if op == "error":
            self._refusal = message  # the close that follows says what it means
        if op not in ("data", "closed"):
            return []  # "ping", and whatever a later server adds
        self.opened = self.delivered = True
        self.offset = str(message.get("offset") or self.offset)
        if op == "closed" or (not self.live and message.get("up_to_date")):
            self.done = True
        if "data" not in message:
            return []
        data = message["data"]
        if isinstance(data, list):  # an application/json stream's messages
            return data
        if message.get("encoding") == "base64":
            return [base64.b64decode(data)]
        return [data] if data else []

    def check_attempts(self, failures: int, limit: int | None) -> None:
        """Raise once ``failures`` sockets in a row delivered nothing, if ``limit`` says so."""
        if limit is not None and failures >= limit:
            raise ConnectionFailed(f"the stream socket failed {failures} times in a row")

    def socket_closed(self, code: int | None) -> SocketEnd:
        """What to do after the socket closed with ``code`` (``None``: no close frame).

        Raises the typed error of a refusal a retry cannot fix (S4).
        """
        if self.done:
            return SocketEnd.DONE
        if code is not None and 4000 <= code < 5000:
            status = code - 4000
            if status == 404 and not self.opened:
                return SocketEnd.NOT_OPEN_YET  # S2
            refusal = self._refusal
            error = str(refusal.get("error") or "http_error")
            message = str(refusal.get("message") or f"the server closed the stream ({code})")
            raise typed_error(status, error, message, refusal)
        return SocketEnd.RECONNECT  # 1012 (restart, lifetime), 1011, 1013, a cut: resume


class SocketEnd(enum.Enum):
    """How a stream socket ended, for the read loops."""

    DONE = "done"
    NOT_OPEN_YET = "not_open_yet"
    RECONNECT = "reconnect"
