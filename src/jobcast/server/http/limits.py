"""Request size limits: headers (431) and bodies (413, enforced while the body streams in,
before anything parses it). The HTTP parser accepts headers of any size, so we check them."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobcast.server.http.errors import error_response

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


def headers_over_limit(
    headers: list[tuple[bytes, bytes]],
    max_headers: int = MAX_HEADERS,
    max_bytes: int = MAX_HEADER_BYTES,
) -> bool:
    """Whether a request's headers are more, or bigger, than we accept (431)."""
    if len(headers) > max_headers:
        return True
    return sum(len(name) + len(value) for name, value in headers) > max_bytes


class BodyLimitMiddleware:
    """Answer 413 to a request whose body exceeds ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before the app runs; a chunked body
    is counted as it arrives and the read that crosses the limit fails with 413. Multipart
    bodies on paths under ``exempt_prefixes`` (streamed uploads, limited as they stream) are
    left alone; any other body there is limited like everywhere else.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt_prefixes: tuple[str, ...] = (),
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = exempt_prefixes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and headers_over_limit(
            scope["headers"], self.max_headers, self.max_header_bytes
        ):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009})
                return
            response = error_response(
                431,
                "headers_too_large",
                f"at most {self.max_headers} headers and {self.max_header_bytes} bytes of them",
            )
            await response(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD")  # no body is read: streams stay lean
            or (scope["path"].startswith(self.exempt_prefixes) and _is_multipart(scope))
        ):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if len(value) > 19 or not value.isdigit() or int(value) > limit:
                    response = error_response(
                        413, "payload_too_large", f"the request body is over {limit} bytes"
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"the request body is over {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).lower().startswith(b"multipart/form-data")
    return False
