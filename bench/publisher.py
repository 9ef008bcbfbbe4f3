"""The publishing side of the benchmark: raw HTTP/1.1 keep-alive connections.

Every event's data carries ``seq`` (its number on its topic) and ``t`` (this clock when the
request was written), which the load processes turn into loss, duplicate and latency figures.
A burst sends as fast as ``connections`` parallel keep-alive connections allow; a paced run
sends event ``i`` at ``start + i / rate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench.targets import HOST

PAYLOAD = "processing segment; a message of a realistic length for a status event"

#: Builds the raw request for one event: (topic, type, data) -> bytes.
RequestBuilder = Callable[[str, str, dict[str, Any]], bytes]
#: Builds the raw request for a batch of events (jobcast's list form of POST /api/events).
BatchBuilder = Callable[[list[tuple[str, str, dict[str, Any]]]], bytes]


@dataclass
class PublishStats:
    sent: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    first_error: str = ""


class HTTPConnection:
    """One keep-alive connection that sends a request and reads its (small) response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, close = 0, False
        for line in head.split(b"\r\n"):
            name = line[:16].lower()
            if name.startswith(b"content-length:"):
                length = int(line[15:])
            elif name.startswith(b"connection:"):
                close = b"close" in line.lower()
        body = await self.reader.readexactly(length) if length else b""
        if close:  # the server ends keep-alive here: the next request opens a new connection
            await self.close()
            self.writer = self.reader = None
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def event_data(seq: int) -> dict[str, Any]:
    return {"seq": seq, "t": time.time(), "status": "PROCESSING", "message": PAYLOAD}


async def publish(
    ports: list[int],
    build: RequestBuilder,
    plan: Iterable[tuple[str, int]],
    *,
    connections: int = 4,
    rate: float = 0.0,
    type: str = "tick",
    batch: int = 1,
    build_batch: BatchBuilder | None = None,
) -> PublishStats:
    """Publish every (topic, seq) of ``plan``; ``rate`` requests/s in all, or 0 for a burst.

    Connections are spread over ``ports`` (several instances share the publishing). With
    ``batch`` > 1, consecutive events go ``batch`` to a request through ``build_batch``.
    """
    stats = PublishStats(started=time.time())
    flat = list(plan)
    items = iter([flat[i : i + batch] for i in range(0, len(flat), batch)])
    pool = [HTTPConnection(ports[i % len(ports)]) for i in range(connections)]
    lock = asyncio.Lock()
    index = 0

    async def next_item() -> list[tuple[str, int]] | None:
        nonlocal index
        async with lock:
            item = next(items, None)
            if item is None:
                return None
            if rate:
                due = stats.started + index / rate
                index += 1
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            return item

    async def run(connection: HTTPConnection) -> None:
        while (chunk := await next_item()) is not None:
            if build_batch is not None and batch > 1:
                raw = build_batch([(topic, type, event_data(seq)) for topic, seq in chunk])
            else:
                ((topic, seq),) = chunk
                raw = build(topic, type, event_data(seq))
            status, body = await connection.request(raw)
            if 200 <= status < 300:
                stats.sent += len(chunk)
            else:
                stats.failed += len(chunk)
                stats.first_error = stats.first_error or f"{status} {body[:200]!r}"

    try:
        await asyncio.gather(*(run(connection) for connection in pool))
    finally:
        for connection in pool:
            await connection.close()
    stats.finished = time.time()
    return stats
