"""The floor: the least an ASGI app on uvicorn can do for a stream, as a reference point.

Not a product and not the seed design: it authenticates nothing, keeps no history, has no
topics, and writes a published body to every stream from the publishing request itself; a
WebSocket is accepted and answered, nothing more. What it
costs per idle connection and per connection opened is what uvicorn (with uvloop and httptools)
costs before any application code runs, so the idle and connect rows can say how much of
jobcast's cost is the server underneath.

Run it with ``uvicorn bench.baselines.floor_app:app``.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

STREAM_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}


class Floor:
    def __init__(self) -> None:
        self.streams: set[Any] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await self.socket(receive, send)
        elif scope["path"] == "/publish":
            await self.publish(receive, send)
        elif scope["path"] == "/events":
            await self.stream(receive, send)
        else:
            await reply(send, b"ok")

    async def stream(self, receive: Receive, send: Send) -> None:
        await send(STREAM_START)
        await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
        self.streams.add(send)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.streams.discard(send)

    async def socket(self, receive: Receive, send: Send) -> None:
        """Accept, then answer every message with one fixed reply (the idle WebSocket floor)."""
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": '{"op":"subscribed"}'})

    async def publish(self, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        frame = {
            "type": "http.response.body",
            "body": b"data: " + body + b"\n\n",
            "more_body": True,
        }
        for stream in list(self.streams):
            await stream(frame)
        await reply(send, b"{}")


async def reply(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = Floor()
