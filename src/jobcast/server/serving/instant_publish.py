"""Plain publishes answered by the connection itself, with no ASGI request, under
``jobcast serve``.

At the rates workers report (one event a request, a few hundred requests a second), what a
publish costs is mostly fixed costs per request: uvicorn's request task and its ``receive``
and ``send``, the middleware frames, the awaits of the fast entrance. A publish that needs
nothing it would wait for is answered in the connection's own callback instead
(``native.StreamProtocol``), once its body is in: checked, committed, delivered and answered
in one synchronous call, the same functions the fast entrance calls.

Decisions (cited as I1..I4):

I1. Only what can be answered without waiting: the fast entrance's plain publish
    (``fast_publish.plain_items``) by a privileged caller (a service: no rate limit to count)
    whose bearer token was verified in the last minute, with no ``Idempotency-Key`` and no
    tracing, to a broker that commits at once (``Broker.publish_now``: memory, and SQLite's
    commit on the loop, sqlite.B6). Whatever cannot be known to be such before anything is
    done goes the usual way, as the ASGI request, with the body already read: every other
    answer keeps its one definition.
I2. The request is held (no task) until its last byte is in. Only bodies of at most uvicorn's
    buffer limit (64 KiB) are held, since uvicorn stops reading past it until an app reads.
I3. The answer is the fast entrance's, byte for byte: status, JSON body, ``X-Request-ID``,
    uvicorn's default headers, the access log line. A refusal found once it is ours (a topic
    the caller may not publish to, an event over the limit, a failed commit) is answered with
    the same JSON as there.
I4. Requests a trusted proxy forwarded (``X-Forwarded-For``) go the usual way, where uvicorn's
    proxy-headers middleware sets the client address the logs show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from jobcast.errors import JobcastError
from jobcast.server.http.errors import jobcast_error_response, unexpected_error_response
from jobcast.server.http.request_id import HEADER, incoming_id, new_request_id
from jobcast.server.ops.logs import REQUEST_ID
from jobcast.server.routes.events import publish_now
from jobcast.server.routes.table import PUBLISH
from jobcast.server.serving.fast_publish import declared_json_body, plain_items

if TYPE_CHECKING:
    from jobcast.server.serving.entrance import FastPaths


class InstantPublish:
    """Answers plain publishes that need no waiting (I1), for one server's entrance."""

    def __init__(self, entrance: FastPaths) -> None:
        self.entrance = entrance
        self.jc = entrance.jc
        self.limit = min(self.jc.settings.max_body_bytes, HIGH_WATER_LIMIT)  # I2

    def takes(self, scope: Scope) -> bool:
        """Whether the request, by its head, may be a publish answered here."""
        if scope["method"] != "POST":
            return False
        path = self.entrance.own_path(scope)
        if path is None or PUBLISH.match(path) is None or not self.entrance.plain(scope):
            return False
        if any(name == b"x-forwarded-for" for name, _ in scope["headers"]):
            return False  # I4
        return declared_json_body(scope, self.limit)

    def answer(self, scope: Scope, body: bytes, write: Callable[[Response], None]) -> bool:
        """Answer the publish in ``body`` through ``write``; false when it goes the usual way
        (I1), nothing having been done."""
        plain = plain_items(body)
        if plain is None or self.jc.hub.tracing is not None:
            return False
        items, batch = plain
        connection = HTTPConnection(scope)
        principal = self.jc.credentials.resolve_known(connection)
        if principal is None:
            return False
        request_id = incoming_id(scope) or new_request_id()
        token = REQUEST_ID.set(request_id)  # the log lines of this request carry it
        try:
            try:
                ids = publish_now(self.jc, connection, principal, items, batch=batch)
                if ids is None:
                    return False
                content = orjson.dumps({"ids": ids} if batch else {"id": ids[0]})
                response = Response(content, 202, media_type="application/json")
            except JobcastError as exc:  # I3
                response = jobcast_error_response(exc, scope)
            except Exception:
                response = unexpected_error_response(scope["method"], scope["path"])
            response.raw_headers.append((HEADER, request_id.encode()))
            write(response)
            return True
        finally:
            REQUEST_ID.reset(token)
