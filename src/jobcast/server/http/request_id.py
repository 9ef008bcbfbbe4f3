"""Request ids: one per HTTP request or WebSocket, in the ``X-Request-ID`` response header and in
every log line written while it is handled (``logs.REQUEST_ID``).

Pure ASGI and cheap, because streams pass through it: an incoming ``X-Request-ID`` is kept when
it is short and plain (a proxy's id ties its logs to ours), otherwise one is generated. The
header is added to ``http.response.start`` only. ``send`` is wrapped once, by a plain function
rather than a coroutine, so each later write of a stream costs one extra call and no frame
(measured: about 30 ns per write, on writes that each carry a whole batch of events).
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobcast.server.ops.logs import REQUEST_ID

HEADER = b"x-request-id"
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")


def incoming_id(scope: Scope) -> str | None:
    """The client's (or proxy's) request id, if it is one we may repeat in logs and headers."""
    for name, value in scope["headers"]:
        if name == HEADER:
            text = value.decode("latin-1")
            return text if _SANE.fullmatch(text) else None
    return None


def new_request_id() -> str:
    """32 random hex digits, like a UUID4's, without a system call: an id must be unique, not
    unpredictable (the generator is seeded from the OS, and again in each forked process)."""
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        request_id = incoming_id(scope) or new_request_id()
        token = REQUEST_ID.set(request_id)
        try:
            if kind == "http":
                send = _with_header(send, request_id.encode())
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


def _with_header(send: Send, value: bytes) -> Send:
    def send_with_id(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == HEADER for name, _ in headers):  # the app's own wins
                message = {**message, "headers": [*headers, (HEADER, value)]}
        return send(message)

    return send_with_id
