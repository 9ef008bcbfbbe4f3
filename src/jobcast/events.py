"""The event model: what a publisher sends, and what the hub hands to subscribers.

An event's id is ``"{epoch}-{position}"``. ``position`` is an integer that the broker assigns in
commit order, so it increases strictly in the order every subscriber receives events. ``epoch``
names one history: when the history is lost (a fresh data directory, a flushed Redis), the
epoch changes and a client that resumes with an old id is told so (an in-band ``reset``) instead
of silently missing events. Clients treat the id as opaque.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from jobcast.errors import InvalidInput
from jobcast.topics import validate_topic

MAX_TYPE_LENGTH = 64
#: Positions are signed 64-bit integers in every history (SQLite, PostgreSQL, Redis).
MAX_POSITION = 2**63 - 1
#: Ours are about 28 characters; a longer one is not ours (and would not fit where acks are kept).
MAX_ID_LENGTH = 64
_TYPE_RE = re.compile(r"[A-Za-z0-9_\-.:/]+")

#: Event types the server itself sends in-band; publishers may not use them.
RESERVED_TYPES = frozenset({"reset", "reauth"})


def validate_type(event_type: str) -> str:
    """Return ``event_type`` if it is a valid event type, else raise :class:`InvalidInput`."""
    if not isinstance(event_type, str) or not event_type:
        raise InvalidInput("event type must be a non-empty string")
    if len(event_type) > MAX_TYPE_LENGTH:
        raise InvalidInput(f"event type is longer than {MAX_TYPE_LENGTH} characters")
    if _TYPE_RE.fullmatch(event_type) is None:
        raise InvalidInput(
            f"invalid event type {event_type[:40]!r}: use letters, digits and '-_.:/'"
        )
    if event_type in RESERVED_TYPES:
        raise InvalidInput(f"event type {event_type!r} is reserved for the server")
    return event_type


def dumps(value: Any) -> bytes:
    """Compact JSON, the one serialisation used for event data everywhere."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise InvalidInput(f"event data is not JSON-serialisable: {exc}") from None


@dataclass(frozen=True, slots=True)
class EventId:
    epoch: str
    position: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.position}"

    @classmethod
    def parse(cls, text: str) -> EventId | None:
        """Parse an id sent back by a client; ``None`` if it is not one of ours.

        Only ASCII digits make a position: ``str.isdigit`` is also true of ``"²"`` (which
        ``int`` refuses) and of full-width digits (which it accepts), neither of which we send.
        """
        if len(text) > MAX_ID_LENGTH:
            return None
        epoch, sep, position = text.rpartition("-")
        if not sep or not epoch or not position.isascii() or not position.isdigit():
            return None
        if len(position) > 19 or int(position) > MAX_POSITION:
            return None
        return cls(epoch, int(position))


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A validated event that has no id yet. ``data_json`` is the compact JSON of the data."""

    topic: str
    type: str
    data_json: bytes

    @classmethod
    def create(cls, topic: str, event_type: str, data: Any) -> EventDraft:
        return cls(validate_topic(topic), validate_type(event_type), dumps(data))


class Event:
    """A published event. Immutable; its wire encodings are computed once and shared."""

    __slots__ = ("_frame", "_message", "data_json", "epoch", "position", "topic", "ts", "type")

    def __init__(
        self,
        epoch: str,
        position: int,
        topic: str,
        type: str,
        data_json: bytes,
        ts: float | None = None,
    ) -> None:
        self.epoch = epoch
        self.position = position
        self.topic = topic
        self.type = type
        self.data_json = data_json
        self.ts = time.time() if ts is None else ts
        self._frame: bytes | None = None
        self._message: bytes | None = None

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.position}"

    @property
    def data(self) -> Any:
        return orjson.loads(self.data_json)

    @property
    def sse_frame(self) -> bytes:
        """The SSE frame (``id``, ``event``, ``data``), encoded on first use and then shared."""
        frame = self._frame
        if frame is None:
            frame = self._frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                self.id.encode(),
                self.type.encode(),
                self.data_json,
            )
        return frame

    @property
    def ws_message(self) -> bytes:
        """The WebSocket/JSON form: ``{"id", "topic", "type", "data", "ts"}``."""
        message = self._message
        if message is None:
            message = self._message = b'{"id":"%s","topic":%s,"type":"%s","data":%s,"ts":%s}' % (
                self.id.encode(),
                orjson.dumps(self.topic),
                self.type.encode(),
                self.data_json,
                repr(round(self.ts, 6)).encode(),
            )
        return message

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "type": self.type,
            "data": self.data,
            "ts": self.ts,
        }

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, topic={self.topic!r}, type={self.type!r})"
