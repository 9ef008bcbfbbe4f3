"""``HEAD`` on jobcast's ``GET`` routes, streams excepted.

A ``HEAD`` is answered as the ``GET`` it names, and the server sends the head alone (uvicorn
drops the body of a response to a ``HEAD``, by the request it parsed). Routes are not declared
with ``HEAD`` themselves: the framework would then describe every route twice in the OpenAPI
schema. A stream's ``HEAD`` stays a ``HEAD`` (405): answered as a ``GET`` it would open the
stream. Durable Streams paths (``/v1/stream/``) answer ``HEAD`` themselves: the protocol's
``HEAD`` describes a stream without reading it (and does not extend its TTL).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from jobcast.server.routes.durable_streams import PREFIX as DURABLE_PREFIX
from jobcast.server.routes.table import EVENTS_STREAM, JOB_STREAM


class HeadAsGet:
    """ASGI: a ``HEAD`` below ``prefix`` reaches the app as a ``GET``, unless it names a stream."""

    def __init__(self, app: ASGIApp, prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD" and not self._stream(scope):
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)

    def _stream(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path[len(self.prefix) :] if path.startswith(self.prefix) else path
        if path.startswith(DURABLE_PREFIX):
            return True
        return EVENTS_STREAM.match(path) is not None or JOB_STREAM.match(path) is not None
