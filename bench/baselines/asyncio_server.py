"""The Python limit: a hand-written asyncio server (uvloop, httptools) that does only SSE fan-out.

A reference point beside nchan, not a product: one ``asyncio.Protocol`` per connection, no
framework, no ASGI, no authentication, no history. ``GET /sub/{topic}`` opens an event stream;
``POST /pub/{topic}`` writes its body to every stream of the topic, encoded once, from the
publishing request itself (as nchan's ``nchan_subscriber_first_message newest``: no replay).
What it costs per event is what the same Python runtime costs when the HTTP layer is lean.

Run it with ``python -m bench.baselines.asyncio_server PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from urllib.parse import unquote

import httptools
import uvloop

STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Hub:
    def __init__(self) -> None:
        self.streams: defaultdict[str, set[asyncio.Transport]] = defaultdict(set)
        self.ids: defaultdict[str, int] = defaultdict(int)

    def publish(self, topic: str, body: bytes) -> None:
        self.ids[topic] += 1
        frame = chunk(b"id: %d\ndata: %s\n\n" % (self.ids[topic], body))  # encoded once
        for transport in self.streams.get(topic, ()):
            transport.write(frame)


class Connection(asyncio.Protocol):
    __slots__ = ("body", "hub", "parser", "topic", "transport", "url")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = bytearray()
        self.topic: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.topic is not None:
            self.hub.streams[self.topic].discard(self.transport)

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = httptools.parse_url(self.url).path.decode()
        method = self.parser.get_method()
        self.url = b""
        if method == b"GET" and path.startswith("/sub/"):
            self.topic = unquote(path[5:])
            self.transport.write(STREAM_HEAD + chunk(b"retry: 3000\n\n"))
            self.hub.streams[self.topic].add(self.transport)
        elif method == b"POST" and path.startswith("/pub/"):
            self.hub.publish(unquote(path[5:]), bytes(self.body))
            self.body.clear()
            self.transport.write(ACCEPTED)
        elif path == "/health":
            self.transport.write(OK)
        else:
            self.transport.write(NOT_FOUND)


async def serve(port: int) -> None:
    hub = Hub()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(hub), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
