"""Reading a job's output stream (``/v1/stream/jobs/{id}/{name}``): the I/O-free core.

The twins (``read_stream`` of ``Client`` and ``AsyncClient``) long-poll the stream: each answer
carries ``Stream-Next-Offset``, the next request asks from there, so a reconnect (a dropped
connection, a server restart) continues at the exact byte; the read ends at
``Stream-Closed``. Decisions (cited as S1..S3):

S1. Text is decoded with an incremental UTF-8 decoder, so a character split between two answers
    is never mangled; ``application/json`` streams yield their messages, other types bytes.
S2. A 404 before the stream exists is the job not having opened it yet: the reader asks the
    job and waits for it (with the reconnect policy's backoff) unless the job already ended,
    in which case there is nothing to read.
S3. ``offset`` is public: save it and pass it back to a later ``read_stream`` to resume where a
    previous reader (another process, say) stopped.
"""

from __future__ import annotations

import codecs
import json
from typing import Any
from urllib.parse import quote

import httpx

BEGINNING = "-1"


class OutputReading:
    """Where one read of an output stream is: its offset, its decoder, whether it ended."""

    def __init__(self, job_id: str, name: str, offset: str = BEGINNING, live: bool = True) -> None:
        self.job_id = job_id
        self.path = f"/v1/stream/jobs/{quote(job_id, safe='')}/{quote(name, safe='')}"
        #: The offset the next request reads from (S3).
        self.offset = offset
        self.live = live
        #: Whether the stream ended (closed and read to its end, or caught up without ``live``).
        self.done = False
        #: Whether the stream was seen to exist (a 404 afterwards is its deletion).
        self.opened = False
        self.content_type = ""
        self._text = codecs.getincrementaldecoder("utf-8")()

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
