"""What an output stream is: its metadata, offsets, content types, JSON framing, and errors.

Decisions (cited as O1..O5):

O1. An offset is ``{incarnation}_{position}``, both 16 decimal digits: the incarnation is the
    stream's internal id (never reused, so a stream deleted and created again at the same path
    is a new incarnation), the position a byte position in what the stream stored. Offsets of
    one stream sort as strings in stream order, as the protocol requires.
O2. An offset of an earlier incarnation names data that was removed: the protocol's 410 Gone,
    so a reader that resumes after the stream was deleted (or expired) and made again learns
    that it missed data instead of reading the new stream from a wrong place.
O3. A JSON stream stores each message as its compact JSON followed by a comma; a read wraps
    what it read in ``[`` ... ``]`` (dropping the last comma). Positions stay byte positions,
    every message boundary is a position, and an append of ``[a, b]`` stores ``a`` and ``b``.
O4. ``text/*`` and ``application/json`` are carried as UTF-8 text in SSE; everything else is
    base64 (the protocol's ``stream-sse-data-encoding: base64``).
O5. Errors carry the protocol's headers (``Stream-Closed`` on a 409 for a closed stream,
    ``Producer-Epoch`` on a stale epoch, ...), so the HTTP layer sends them unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from jobcast.errors import JobcastError, PayloadTooLarge

OFFSET_RE = re.compile(r"(\d{16})_(\d{16})")
BEGINNING = "-1"
NOW = "now"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: Most bytes one catch-up read returns (whole stored chunks; at least one).
READ_BUDGET = 1024 * 1024


class StreamError(JobcastError):
    """A protocol error: a status, a code, a message and the protocol's headers (O5)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.code = code
        self.headers = headers or {}


def not_found(path: str) -> StreamError:
    return StreamError(404, "not_found", f"no stream {path!r}")


def bad_request(message: str) -> StreamError:
    return StreamError(400, "bad_request", message)


def conflict(message: str, headers: dict[str, str] | None = None) -> StreamError:
    return StreamError(409, "conflict", message, headers)


def closed_conflict(next_offset: str) -> StreamError:
    return conflict(
        "the stream is closed", {"Stream-Closed": "true", "Stream-Next-Offset": next_offset}
    )


def sequence_gap(expected: int, received: int) -> StreamError:
    return conflict(
        f"Producer-Seq {received} leaves a gap: expected {expected}",
        {"Producer-Expected-Seq": str(expected), "Producer-Received-Seq": str(received)},
    )


def stale_epoch(epoch: int) -> StreamError:
    return StreamError(
        403, "stale_epoch", "a newer producer epoch took over", {"Producer-Epoch": str(epoch)}
    )


def new_epoch_seq() -> StreamError:
    return bad_request("a new Producer-Epoch starts at Producer-Seq 0")


def seq_conflict(seq: str, last: str) -> StreamError:
    return conflict(f"Stream-Seq {seq!r} is not after {last!r}")


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the stream would hold {size} bytes; the limit is {limit} (JOBCAST_MAX_STREAM_BYTES)"
    )


def format_offset(incarnation: int, position: int) -> str:
    return f"{incarnation:016d}_{position:016d}"


def parse_offset(text: str) -> tuple[int, int]:
    """``(incarnation, position)`` of an offset this server minted (O1), or a 400."""
    match = OFFSET_RE.fullmatch(text)
    if match is None:
        raise bad_request(f"malformed offset {text[:80]!r}: use -1, now, or a Stream-Next-Offset")
    return int(match[1]), int(match[2])


def media_type(content_type: str | None) -> str:
    """The media type alone, lower case: ``Text/Plain; charset=utf-8`` -> ``text/plain``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Whether SSE carries this type as text rather than base64 (O4)."""
    kind = media_type(content_type)
    return kind.startswith("text/") or kind == "application/json"


def json_messages(body: bytes, *, allow_empty: bool) -> bytes:
    """What an append of ``body`` to a JSON stream stores (O3), or a 400.

    One level of a top-level array is flattened: ``[a, b]`` is two messages, ``[[1, 2]]`` one.
    An empty array is refused on append (it would append nothing) but creates an empty stream.
    """
    try:
        value: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise bad_request("an empty JSON array appends nothing")
    try:
        return b"".join(_compact(item) + b"," for item in items)
    except ValueError:  # NaN or Infinity, which JSON cannot hold
        raise bad_request("NaN and infinite numbers are not JSON") from None


def _compact(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_body(stored: bytes) -> bytes:
    """A JSON stream's stored bytes as the array a read returns (O3)."""
    return b"[" + stored.rstrip(b",") + b"]"


@dataclasses.dataclass(frozen=True)
class Producer:
    """An idempotent producer's headers: ``Producer-Id``, ``-Epoch``, ``-Seq``."""

    id: str
    epoch: int
    seq: int


@dataclasses.dataclass
class StreamInfo:
    """One stream's metadata, as a backend keeps it."""

    incarnation: int
    path: str
    content_type: str
    ttl: int | None = None
    expires_at: float | None = None
    closed: bool = False
    #: The position after the last stored byte.
    tail: int = 0
    #: The last ``Stream-Seq`` accepted (compared as strings).
    last_seq: str | None = None
    #: The producer tuple whose append closed the stream (a retry of it is a duplicate).
    closed_by: Producer | None = None
    accessed_at: float = 0.0

    @property
    def next_offset(self) -> str:
        return format_offset(self.incarnation, self.tail)

    def expired(self, now: float) -> bool:
        if self.expires_at is not None and now >= self.expires_at:
            return True
        return self.ttl is not None and now >= self.accessed_at + self.ttl

    def same_config(self, content_type: str, ttl: int | None, expires_at: float | None) -> bool:
        return (
            media_type(self.content_type) == media_type(content_type)
            and self.ttl == ttl
            and self.expires_at == expires_at
        )

    def describe(self) -> dict[str, Any]:
        """What a job's snapshot lists of one of its streams."""
        return {
            "name": self.path.rsplit("/", 1)[-1],
            "path": self.path,
            "content_type": self.content_type,
            "length": self.tail,
            "closed": self.closed,
        }


@dataclasses.dataclass(frozen=True)
class Appended:
    """How an append ended: the stream after it, and whether it was new data or a duplicate."""

    info: StreamInfo
    #: False for an idempotent producer's duplicate (nothing was written).
    fresh: bool = True
    #: The highest ``Producer-Seq`` accepted for the producer's epoch.
    producer_seq: int | None = None


def found_again(
    info: StreamInfo, content_type: str, ttl: int | None, expires_at: float | None, closed: bool
) -> tuple[StreamInfo, bool]:
    """A create that found ``info`` at its path: the same stream (``False``: not created), or
    409 when its configuration differs. The rule of every backend."""
    if info.same_config(content_type, ttl, expires_at) and info.closed == closed:
        return info, False
    raise conflict("a stream with a different configuration exists at this path")


def closed_answer(
    info: StreamInfo, body: bytes, *, close: bool, producer: Producer | None
) -> Appended | None:
    """An append's answer when its stream is closed (the protocol's precedence: closed first):
    a duplicate of the closing append, an idempotent close, or 409; ``None`` when open."""
    if not info.closed:
        return None
    if producer is not None and producer == info.closed_by:
        return Appended(info, fresh=False, producer_seq=producer.seq)
    if not body and close and producer is None:
        return Appended(info, fresh=False)  # closing again is idempotent
    raise closed_conflict(info.next_offset)


def check_content_type(info: StreamInfo, body: bytes, content_type: str | None) -> None:
    """409 for a body whose declared type is not the stream's."""
    if (
        body
        and content_type is not None
        and media_type(content_type) != media_type(info.content_type)
    ):
        raise conflict(f"the stream's content type is {info.content_type}")


def check_seq(info: StreamInfo, seq: str | None) -> None:
    """409 for a ``Stream-Seq`` not above the last one accepted."""
    if seq is not None and info.last_seq is not None and seq <= info.last_seq:
        raise seq_conflict(seq, info.last_seq)


def framed_write(chunk: Any, content_type: str, *, as_json: bool) -> bytes:
    """One ``write`` of a job's (or a task's) output stream, as stored: for a JSON stream
    (``as_json``, known to its writer) any JSON value, compact and followed by a comma (O3);
    else text (UTF-8) or bytes."""
    if as_json:
        try:
            text = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a JSON stream takes JSON values: {exc}") from None
        return text.encode() + b","
    if isinstance(chunk, str):
        return chunk.encode()
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"write text or bytes to a {content_type} stream")


def check_room(name: str, length: int, added: int, limit: int) -> None:
    """Refuse a write that would take a stream of ``length`` bytes past ``limit``."""
    if length + added > limit:
        raise PayloadTooLarge(
            f"output stream {name!r} would hold {length + added} bytes; the limit is {limit}"
            " (JOBCAST_MAX_STREAM_BYTES)"
        )


def stored_form(info: StreamInfo, body: bytes) -> bytes:
    """What an append stores: a JSON stream's messages framed (one level of an array
    flattened), any other body as it came."""
    return json_messages(body, allow_empty=False) if body and is_json(info.content_type) else body


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Stored bytes from ``start`` on."""

    start: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """What one read found: the stream's state when it read, and the bytes from the position."""

    info: StreamInfo
    position: int
    data: bytes
    #: Where the next read starts.
    end: int
    #: Whether the read reached the tail.
    up_to_date: bool

    @property
    def eof(self) -> bool:
        """The reader reached the end of a closed stream: no more data, ever."""
        return self.up_to_date and self.info.closed
