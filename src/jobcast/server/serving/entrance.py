"""The fast entrance: the hottest routes answered in front of the framework.

Streams (``fast_streams.py``: event streams and Durable Streams SSE reads), WebSockets and
HTTP publishes (``fast_publish.py``) are most of what a busy jobcast serves. Through FastAPI
each one passes a dozen layers: for a stream or a socket, each keeps a suspended frame alive
for its whole life; for a publish, routing, dependency solving and model validation cost more
than publishing. This pure ASGI wrapper answers them with the same functions the FastAPI
routes call, and hands everything else to the app.

Decisions (cited as F1..F5):

F1. It takes only the requests that need nothing from the layers it skips: headers within the
    431 limits, and no ``Origin`` when CORS is configured (the CORS middleware must answer
    those). Anything else goes to the app, whose middleware stack answers as for any request.
    A WebSocket needs only the header limits: CORS does not apply to handshakes, whose
    ``Origin`` the socket handlers check themselves.
F2. It does the one thing every response needs from the skipped layers itself: the request id
    (``request_id.py``), in the logs and in the ``X-Request-ID`` header.
F3. ``install()`` puts it outside jobcast's other middlewares, and ``jobcast serve`` wraps the
    whole application in a second instance, so that on the standalone server these requests
    do not even pass FastAPI's and Starlette's entry frames (about 3 KB per stream together).
F4. It steps aside when the application overrides jobcast's principal dependency
    (``app.dependency_overrides[jc.principal]``): the framework's routes then answer, and the
    override applies to every jobcast route, streams and sockets included.
F5. Under ``install(app, prefix=...)`` its paths are below the prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from jobcast.server.http.browser import allowed_origins
from jobcast.server.http.limits import headers_over_limit
from jobcast.server.http.request_id import HEADER, incoming_id, new_request_id
from jobcast.server.ops.logs import REQUEST_ID
from jobcast.server.routes.durable_streams import PREFIX as DURABLE_PREFIX
from jobcast.server.routes.table import (
    EVENTS_SOCKET,
    EVENTS_STREAM,
    JOB_SOCKET,
    JOB_STREAM,
    PUBLISH,
)
from jobcast.server.serving.fast_publish import (
    declared_body,
    declared_json_body,
    publish_plain,
    read_body,
    replay,
)
from jobcast.server.serving.fast_streams import (
    carrier,
    durable_answer,
    open_fast_stream,
)
from jobcast.server.streams.durable_sse import DurableSseResponse
from jobcast.server.streams.event_socket import serve_event_socket
from jobcast.server.streams.job_socket import serve_job_socket
from jobcast.server.streams.sse import EventStreamResponse

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


class FastPaths:
    """Pure ASGI: SSE streams and plain publishes here, everything else to the app."""

    def __init__(self, app: ASGIApp, jc: Runtime, prefix: str = "") -> None:
        self.app = app
        self.jc = jc
        self.cors = bool(allowed_origins(jc.settings))
        self.prefix = prefix  # F5

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = self.own_path(scope)
        if path is None:
            await self.app(scope, receive, send)
            return
        if kind == "websocket" and not headers_over_limit(scope["headers"]):
            await self._socket(path, scope, receive, send)  # no CORS for sockets: F1
            return
        if kind != "http" or not self.plain(scope):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "POST" and PUBLISH.match(path) is not None:
            await self._publish(scope, receive, send)
            return
        if method == "POST" and path.startswith(DURABLE_PREFIX):
            await self._append(path[len(DURABLE_PREFIX) :], scope, receive, send)
            return
        if method != "GET":
            await self.app(scope, receive, send)
            return
        durable = path.startswith(DURABLE_PREFIX) and b"live=sse" in scope["query_string"]
        if not durable and EVENTS_STREAM.match(path) is None and JOB_STREAM.match(path) is None:
            await self.app(scope, receive, send)
            return
        # A stream, answered in this frame (not a helper's): it lives as long as the stream.
        request_id = incoming_id(scope) or new_request_id()  # F2
        token = REQUEST_ID.set(request_id)
        try:
            if durable:
                stream = path[len(DURABLE_PREFIX) :]
                response = await durable_answer(self.jc, scope, stream, receive)
            else:
                response = await open_fast_stream(self.jc, scope, path)
            response.raw_headers.append((HEADER, request_id.encode()))
            connection = carrier(scope)
            if (
                connection is not None
                and isinstance(response, EventStreamResponse | DurableSseResponse)
                and connection.adopt(scope, response)  # it carries the stream from here: N1
            ):
                return
            await response(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)

    def own_path(self, scope: Scope) -> str | None:
        """The path below the prefix (F5); ``None`` when the request is not for this entrance:
        another path, or an application that overrides the principal dependency (F4)."""
        path: str = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # uvicorn's --root-path is part of the path
            path = path[len(root) :]
        if self.prefix:
            if not path.startswith(self.prefix):
                return None
            path = path[len(self.prefix) :]
        app = scope.get("app")  # set by the application once a request reaches it
        overrides = getattr(app, "dependency_overrides", None)
        if overrides and self.jc.principal in overrides:
            return None
        return path

    async def _socket(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """``/ws/events`` and ``/ws/jobs/{id}``: their handlers check the Origin themselves."""
        job_id = JOB_SOCKET.match(path)
        if job_id is None and EVENTS_SOCKET.match(path) is None:
            await self.app(scope, receive, send)
            return
        token = REQUEST_ID.set(incoming_id(scope) or new_request_id())  # F2
        try:
            websocket = WebSocket(scope, receive, send)
            if job_id is None:
                await serve_event_socket(self.jc, websocket)
            else:
                await serve_job_socket(self.jc, websocket, job_id)
        finally:
            REQUEST_ID.reset(token)

    async def _append(self, stream: str, scope: Scope, receive: Receive, send: Send) -> None:
        """An append to a Durable Stream (``POST /v1/stream/{path}``) with a declared body
        within the body limit; anything else goes to the app, which enforces its limits."""
        if not declared_body(scope, self.jc.settings.max_body_bytes):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        request_id = incoming_id(scope) or new_request_id()  # F2
        token = REQUEST_ID.set(request_id)
        try:
            response = await durable_answer(self.jc, scope, stream, replay(body, receive))
            response.raw_headers.append((HEADER, request_id.encode()))
            connection = carrier(scope)
            if connection is None or not connection.reply(scope, response):  # N2: one write
                await response(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)

    def plain(self, scope: Scope) -> bool:  # F1
        headers = scope["headers"]
        if headers_over_limit(headers):
            return False
        return not (self.cors and any(name == b"origin" for name, _ in headers))

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not declared_json_body(scope, self.jc.settings.max_body_bytes):
            await self.app(scope, receive, send)  # no length, too long, or not JSON
            return
        body = await read_body(receive)
        if body is None:
            return  # the client went away before sending its body
        request_id = incoming_id(scope) or new_request_id()  # F2
        token = REQUEST_ID.set(request_id)
        try:
            response = await publish_plain(self.jc, scope, body)
            if response is None:  # not the plain shape: the FastAPI route answers
                await self.app(scope, replay(body, receive), send)
                return
            response.raw_headers.append((HEADER, request_id.encode()))
            connection = carrier(scope)
            if connection is None or not connection.reply(scope, response):  # N2: one write
                await response(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)
