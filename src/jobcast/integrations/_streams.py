"""What a task's ``stream(...)`` hands back on either reporting path, and its stand-in when
jobcast cannot be reached.

A task writes its output streams as a native job does (``ctx.stream``): ``out.write(chunk)``
(text, bytes, or a JSON value for ``application/json``), ``out.close()``, every stream closed
when the task ends. The direct path hands out the native writer (``_direct_streams.py``), the
HTTP path one of its own with the same behaviour (``_http_streams.py``).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Protocol

from jobcast.errors import InvalidInput

if TYPE_CHECKING:
    import collections

logger = logging.getLogger("jobcast.integrations")

#: A stream's name, as ``ctx.stream`` takes it (``outputs/job_output.py``).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class OutputWriter(Protocol):
    """One output stream of a running task: ``write`` is cheap and never waits."""

    name: str
    path: str
    content_type: str

    def write(self, chunk: str | bytes | Any) -> None: ...

    def close(self) -> None: ...


class JobStreams(Protocol):
    """The output streams of one task's job in this process."""

    def open(self, name: str, content_type: str) -> OutputWriter: ...


def check_name(name: object) -> str:
    """``name`` if it is a stream name, else :class:`~jobcast.errors.InvalidInput`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput("a stream name is 1-64 letters, digits, '.', '_' or '-'")
    return name


class DroppedStream:
    """A stream whose job jobcast could not be reached for (``_reporter.P3``): the task goes
    on, its writes are counted as dropped (``output_dropped``) and logged once."""

    def __init__(
        self, counts: collections.Counter[str], job_id: str, name: str, content_type: str
    ) -> None:
        self.name = name
        self.path = f"jobs/{job_id}/{name}"
        self.content_type = content_type
        self.closed = False
        self._counts = counts

    def write(self, chunk: str | bytes | Any) -> None:
        if self.closed:
            raise ValueError(f"output stream {self.name!r} is closed")
        self._counts["output_dropped"] += 1
        if self._counts["output_dropped"] == 1:
            logger.warning("%s: output dropped: jobcast could not be reached", self.path)

    def close(self) -> None:
        self.closed = True
