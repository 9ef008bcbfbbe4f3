"""Streaming multipart reception of a job submission: the file goes to disk as it arrives.

Decisions (cited as U1..U5):

U1. The body is parsed incrementally (python-multipart's callback parser); the file part is
    written to a temporary file in the uploads directory and hashed chunk by chunk, both in a
    worker thread, so neither memory nor the event loop carries the upload.
U2. The size limit is enforced while streaming: the chunk that crosses it ends the upload with
    413 and the partial file is deleted. A declared ``Content-Length`` far over the limit is
    refused before anything is read.
U3. Before answering 413, up to ``DRAIN_BYTES`` more of the body are read and discarded, so a
    client that overshot by a little receives the answer instead of a reset connection.
U4. The client's filename is kept for display only (its last path segment, without control
    characters); files on disk are named by job id.
U5. A body the parser refuses (a header line over ``MAX_HEADER_BYTES``, more than
    ``MAX_HEADERS`` headers in a part, a header without a colon, a broken boundary) is the
    client's error: 422 with the parser's reason, and nothing is kept. So is a body that ends
    before its closing boundary, which the parser accepts silently: its file would be partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from jobcast._files import make_private_dir, open_private
from jobcast.errors import InvalidInput, PayloadTooLarge
from jobcast.jobs.model import InputFile

DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 5.0
#: Flush the file to disk once this much has accumulated (one thread hop per flush).
FLUSH_BYTES = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Per part: the most header lines, and the longest one (U5; python-multipart enforces them).
MAX_HEADERS = 8
MAX_HEADER_BYTES = 4096 + 128


@dataclass(slots=True)
class Received:
    """The fields of a multipart submission, with its file (if any) on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    upload: Path | None = None
    input: InputFile | None = None

    def discard(self) -> None:
        if self.upload is not None:
            self.upload.unlink(missing_ok=True)

    async def remove(self) -> None:
        """:meth:`discard` in a worker thread: deleting a large file can block the event loop."""
        if self.upload is not None:
            await asyncio.to_thread(self.upload.unlink, missing_ok=True)


def display_filename(raw: str) -> str:
    """The part of a client's filename worth showing; never used as a path (U4)."""
    name = _CONTROL.sub("", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:255] or "upload"


class _Parts:
    """Callback state for the parser: one file part named ``file``, small text fields."""

    def __init__(
        self, directory: Path, max_file: int, max_fields: int, content_types: list[str]
    ) -> None:
        self.directory = directory
        self.max_file = max_file
        self.max_fields = max_fields
        self.content_types = content_types
        self.received = Received()
        self.file: BinaryIO | None = None
        self.buffer = bytearray()
        self.hasher = hashlib.sha256()
        self.file_size = 0
        self.field_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self.content_type = "application/octet-stream"
        self.filename = ""

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name, self._is_file = {}, None, False
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._name != "file":
            return
        if self.file is not None or self.received.upload is not None:
            raise InvalidInput("send exactly one 'file' part")
        content_type = self._headers.get(b"content-type", b"application/octet-stream")
        self.content_type = content_type.decode("latin-1").split(";")[0].strip().lower()
        if self.content_types and self.content_type not in self.content_types:
            allowed = ", ".join(self.content_types)
            raise InvalidInput(
                f"uploads of type {self.content_type!r} are not accepted (only {allowed})"
            )
        self.filename = display_filename(filename.decode("utf-8", "replace") if filename else "")
        self._is_file = True
        path = self.directory / f".incoming-{secrets.token_hex(8)}"
        self.received.upload = path
        self.file = open_private(path)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self._is_file:
            self.file_size += size
            if self.file_size > self.max_file:  # U2
                raise PayloadTooLarge(f"the upload is over the {self.max_file} byte limit")
            self.buffer += data[start:end]
            return
        self.field_bytes += size
        if self.field_bytes > self.max_fields:
            raise PayloadTooLarge(f"the form fields are over {self.max_fields} bytes")
        self._value += data[start:end]

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.received.fields[self._name] = self._value.decode("utf-8", "replace")


def _absorb(file: BinaryIO, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    file.write(data)


async def receive_multipart(
    request: Request,
    directory: Path,
    *,
    max_file: int,
    max_fields: int,
    content_types: list[str],
) -> Received:
    """Stream a multipart body: the ``file`` part to ``directory``, the rest as text fields."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data needs a boundary")
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit accepts "²", which int() refuses (a 500, not a 413).
    limit = max_file + max_fields + 64 * 1024
    if (
        declared.isascii()
        and declared.isdigit()
        and (len(declared) > 19 or int(declared) > limit)  # U2
    ):
        raise PayloadTooLarge(f"the upload is over the {max_file} byte limit")
    await asyncio.to_thread(make_private_dir, directory)
    parts = _Parts(directory, max_file, max_fields, content_types)
    parser = MultipartParser(
        boundary,
        parts.callbacks(),
        max_header_count=MAX_HEADERS,
        max_header_size=MAX_HEADER_BYTES,
    )
    chunks = request.stream()
    try:
        try:
            async for chunk in chunks:
                parser.write(chunk)
                if parts.file is not None and len(parts.buffer) >= FLUSH_BYTES:
                    await _flush(parts)
            parser.finalize()
            if parser.state != MultipartState.END:  # U5
                raise MultipartParseError("the body ends before its closing boundary")
            if parts.file is not None:
                await _flush(parts)
        except PayloadTooLarge:
            await _drain(chunks)  # U3
            raise
        except ClientDisconnect:
            raise InvalidInput("the client went away during the upload") from None
        except MultipartParseError as exc:  # U5
            raise InvalidInput(f"malformed multipart body: {exc}") from None
        finally:
            if parts.file is not None:
                parts.file.close()
    except BaseException:
        await parts.received.remove()
        raise
    received = parts.received
    if received.upload is not None:
        received.input = InputFile(
            parts.filename, parts.file_size, parts.hasher.hexdigest(), parts.content_type
        )
    return received


async def _flush(parts: _Parts) -> None:
    data, parts.buffer = bytes(parts.buffer), bytearray()
    assert parts.file is not None
    await asyncio.to_thread(_absorb, parts.file, parts.hasher, data)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    drained = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect, OSError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    break
