"""What both WebSocket routes share: authentication, bounded reads and writes, close codes.

Close codes: 1000 the stream is complete (a job finished), 1008 policy violation (flooding),
1009 a message too big, 1011 a server error, 1012 the server is restarting or the stream
reached JOBCAST_MAX_STREAM_SECONDS (reconnect and resume), 1013 too slow or the service is
unavailable (reconnect later and resume), and
``4000 + HTTP status`` for request errors: 4401 unauthorized, 4403 forbidden, 4404 not found,
4422 invalid input. Every close is preceded by an ``{"op": "error"}`` message saying why.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket

from jobcast.auth import Principal
from jobcast.config import Settings
from jobcast.errors import JobcastError, Unauthorized, Unavailable
from jobcast.server.http.browser import origin_allowed
from jobcast.server.http.credentials import STALE_SESSION
from jobcast.subscription import CloseReason

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_ERROR = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013
PING = '{"op":"ping"}'


async def accept_from_allowed_origin(settings: Settings, websocket: WebSocket) -> bool:
    """Accept the handshake, or refuse it (HTTP 403) when a browser sent a foreign Origin:
    cookies ride along on cross-site WebSocket handshakes, and CORS does not apply to them."""
    if not origin_allowed(settings, websocket):
        await websocket.close(code=1008)
        return False
    await websocket.accept()
    return True


def error_message(message: str, **extra: Any) -> str:
    """An ``{"op": "error"}`` message."""
    return orjson.dumps({"op": "error", "message": message, **extra}).decode()


class Caller:
    """A socket's caller decided before it was accepted (an application's override of the
    principal dependency, mount.M1), so the socket does not authenticate by itself."""

    __slots__ = ("principal",)

    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal


class SocketClosed(Exception):
    """The client went away, or the socket was closed for a reason already sent."""


def close_code(exc: JobcastError) -> int:
    if isinstance(exc, Unavailable):
        return CLOSE_TRY_LATER
    if 400 <= exc.status_code < 500:
        return 4000 + exc.status_code
    return CLOSE_ERROR


def subscription_close_code(reason: CloseReason) -> int:
    if reason is CloseReason.DRAIN or reason is CloseReason.TIME_LIMIT:
        return CLOSE_RESTART  # nothing is wrong: reconnect (elsewhere) and resume
    if reason is CloseReason.EXPIRED:
        return 4401
    return CLOSE_TRY_LATER


class Channel:
    """One accepted WebSocket: bounded sends, guarded receives, one close."""

    def __init__(self, jc: Runtime, ws: WebSocket) -> None:
        self.jc = jc
        self.ws = ws
        self.settings = jc.settings
        self.closed = False
        self._window_start = time.monotonic()
        self._window_count = 0

    async def send(self, text: str) -> None:
        if self.closed:
            raise SocketClosed
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await self.ws.send({"type": "websocket.send", "text": text})
        except (TimeoutError, OSError, RuntimeError) as exc:  # stuck or gone
            self.closed = True
            raise SocketClosed from exc

    async def send_json(self, value: Any) -> None:
        await self.send(orjson.dumps(value).decode())

    async def error(self, message: str, **extra: Any) -> None:
        await self.send(error_message(message, **extra))

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await self.ws.close(code, reason[:120])
        except (TimeoutError, OSError, RuntimeError):
            pass

    async def fail(self, exc: JobcastError) -> None:
        """Report ``exc`` to the client and close with its code."""
        try:
            await self.error(exc.message, error=exc.code)
        except SocketClosed:
            return
        code = close_code(exc)
        if code == CLOSE_TRY_LATER and self.jc.hub.draining:
            code = CLOSE_RESTART  # refused by a stopping instance: reconnect (elsewhere) now
        await self.close(code, exc.code)

    async def receive(self) -> Any:
        """The next JSON message; raises :class:`SocketClosed` when the client went away.

        Over-large messages close the socket (1009), floods too (1008); text that is not a
        JSON object is answered with an error message and skipped.
        """
        while True:
            try:
                message = await self.ws.receive()
            except RuntimeError:  # receiving after a close
                self.closed = True
                raise SocketClosed from None
            if message["type"] == "websocket.disconnect":
                self.closed = True
                raise SocketClosed
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", "replace")
            await self._guard(len(raw))
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                await self.error("messages must be JSON objects")
                continue
            if not isinstance(value, dict):
                await self.error("messages must be JSON objects")
                continue
            return value

    async def _guard(self, size: int) -> None:
        settings = self.settings
        if size > settings.ws_max_message_bytes:
            await self.error(f"messages are limited to {settings.ws_max_message_bytes} bytes")
            await self.close(CLOSE_TOO_BIG, "message too big")
            raise SocketClosed
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        if self._window_count > settings.ws_max_messages_per_second:
            await self.error("too many messages; slow down", error="rate_limited")
            await self.close(CLOSE_POLICY, "flooding")
            raise SocketClosed

    async def authenticate(self, *, required: bool) -> tuple[Principal | None, Any]:
        """The caller, from ``?token=``, the Authorization header, or a first message
        ``{"op": "auth", "token": ...}``. Returns the principal and the first message when it
        was something else (to be handled by the caller)."""
        ws = self.ws
        principal = await self.jc.credentials.resolve(ws)
        if principal is not None:
            return principal, None
        if required and STALE_SESSION in ws.scope:  # credentials.C1: say why, at once
            raise ws.scope[STALE_SESSION]
        try:
            async with asyncio.timeout(self.settings.ws_auth_timeout):
                first = await self.receive()
        except TimeoutError:
            raise Unauthorized(
                'send a token (?token=, or a first message {"op": "auth", "token": ...})',
                reason="missing_token",
            ) from None
        if first.get("op") == "auth":
            if not isinstance(first.get("token"), str):
                raise Unauthorized(
                    "the auth message needs a 'token' string", reason="missing_token"
                )
            return await self.jc.tokens.verify(first["token"]), None
        if required:
            raise Unauthorized(
                'this socket needs a token: ?token= or a first message {"op": "auth", ...}',
                reason="missing_token",
            )
        return None, first
