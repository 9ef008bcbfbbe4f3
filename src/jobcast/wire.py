"""The SSE wire format: a byte-exact encoder and an I/O-free WHATWG decoder.

Shared by the server (encoding) and the clients and tests (decoding). Decisions:

1. ``id`` and ``event`` values may never carry CR, LF or NUL: a CR or LF would end the field and
   let a value inject fields of its own; browsers ignore an id containing NUL. The encoder raises
   ``ValueError`` rather than silently rewriting a value.
2. ``data`` may span lines; each line becomes its own ``data:`` field, as the standard defines,
   so the receiver reassembles it exactly (CRLF and lone CR become LF, as every client does).
3. Heartbeats are comment lines (``:``), which every client ignores and every proxy forwards.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: A heartbeat: an SSE comment. Clients ignore it; it keeps idle proxies from closing the stream.
HEARTBEAT = b": ping\n\n"


def _check_field(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One SSE frame. ``encode()`` is the only serialisation of frames in jobcast."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def encode(self) -> bytes:
        lines: list[str] = []
        if self.comment is not None:
            lines.extend(f": {line}" for line in _LINE_BREAK.split(self.comment))
        if self.id is not None:
            _check_field("id", self.id)
            lines.append(f"id: {self.id}")
        if self.event is not None:
            _check_field("event", self.event)
            lines.append(f"event: {self.event}")
        if self.retry is not None:
            if self.retry < 0:
                raise ValueError("SSE retry must be a non-negative number of milliseconds")
            lines.append(f"retry: {self.retry}")
        if self.data is not None:
            lines.extend(f"data: {line}" for line in _LINE_BREAK.split(self.data))
        return ("\n".join(lines) + "\n\n").encode()


@functools.lru_cache(maxsize=16)
def retry_frame(milliseconds: int) -> bytes:
    """A ``retry:`` hint alone (cached: every stream opens with one of a few)."""
    return ServerSentEvent(retry=milliseconds).encode()


def opening_frame(milliseconds: int, event_id: str) -> bytes:
    """A ``retry:`` hint with an ``id:`` and no event (what ``ServerSentEvent(id=..., retry=...)``
    encodes, without its checks: an event id is made by jobcast and carries no line break)."""
    return b"id: " + event_id.encode() + b"\n" + retry_frame(milliseconds)


class SSEDecoder:
    """Incremental SSE parser following the WHATWG "event stream interpretation" algorithm.

    Feed it text chunks in any split; it returns the events completed so far. It keeps the
    last event id across events (as a browser does) and the last ``retry`` value. Comment
    lines are returned as events with ``comment`` set when ``keep_comments`` is true.
    """

    def __init__(self, *, keep_comments: bool = False) -> None:
        self.keep_comments = keep_comments
        self.last_event_id = ""
        self.retry: int | None = None
        self._buffer = ""
        self._started = False
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id_seen = False

    def feed(self, chunk: str) -> list[ServerSentEvent]:
        if not self._started and chunk:
            self._started = True
            chunk = chunk.removeprefix("\ufeff")
        if self._pending_cr and chunk.startswith("\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        text = self._buffer + chunk
        lines = _LINE_BREAK.split(text)
        self._buffer = lines.pop()  # an unterminated last line waits for more input
        if not self._buffer and text.endswith("\r"):
            self._pending_cr = True
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            if self.keep_comments:
                return ServerSentEvent(comment=line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._id_seen = True
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= 10:
            # WHATWG: ASCII digits only; more than ten (months) is no hint, and int() refuses
            # strings of thousands of digits.
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event, id_seen = self._data, self._event, self._id_seen
        self._data, self._event, self._id_seen = [], "", False
        if not data:
            return None
        return ServerSentEvent(
            data="\n".join(data),
            event=event or "message",
            id=self.last_event_id if (id_seen or self.last_event_id) else None,
        )
