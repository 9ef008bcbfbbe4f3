"""Writes answered by the connection itself, with no ASGI request, under ``jobcast serve``:
plain publishes (``POST /api/events``) and Durable Streams appends (``POST /v1/stream/...``).

At the rates workers report (one event or one chunk a request, a few hundred requests a
second), what a write costs is mostly fixed costs per request: uvicorn's request task and its
``receive`` and ``send``, the middleware frames, the awaits of the fast entrance. A write that
needs nothing it would wait for is answered in the connection's own callback instead
(``native.StreamProtocol``), once its body is in: checked, committed, delivered and answered
in one synchronous call, with the functions the fast entrance calls.

Decisions (cited as I1..I5):

I1. Only what can be answered without waiting: the fast entrance's plain publish
    (``fast_publish.plain_items``) by a privileged caller (a service: no rate limit to count)
    whose bearer token was verified in the last minute, with no ``Idempotency-Key`` and no
    tracing, to a broker that commits at once (``Broker.publish_now``: memory, and SQLite's
    commit on the loop, sqlite.B6). Whatever cannot be known to be such before anything is
    done goes the usual way, as the ASGI request, with the body already read: every other
    answer keeps its one definition.
I2. The request is held (no task) until its last byte is in. Only bodies of at most uvicorn's
    buffer limit (64 KiB) are held, since uvicorn stops reading past it until an app reads.
I3. The answer is the fast entrance's, byte for byte: status, body, ``X-Request-ID``,
    uvicorn's default headers, the access log line. A refusal found once it is ours (a topic
    the caller may not publish to, an event over the limit, a failed commit) is answered with
    the same JSON as there.
I4. Requests a trusted proxy forwarded (``X-Forwarded-For``) go the usual way, where uvicorn's
    proxy-headers middleware sets the client address the logs show.
I5. An append (``durable_streams.append_now``) is taken on the same terms: a privileged
    caller known from the token memory, or no credential at all on a public prefix (no rate
    limit either way), to a store that commits at once (``StreamStore.append_now``: SQLite's
    commit on the loop, outputs/sqlite.O1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Scope
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from jobcast.errors import JobcastError
from jobcast.server.http.credentials import Unresolved
from jobcast.server.http.errors import jobcast_error_response, unexpected_error_response
from jobcast.server.http.request_id import HEADER, incoming_id, new_request_id
from jobcast.server.ops.logs import REQUEST_ID
from jobcast.server.routes.durable_streams import PREFIX as DURABLE_PREFIX
from jobcast.server.routes.durable_streams import append_now
from jobcast.server.routes.events import publish_now
from jobcast.server.routes.table import PUBLISH
from jobcast.server.serving.fast_publish import declared_body, declared_json_body, plain_items

if TYPE_CHECKING:
    from jobcast.server.serving.entrance import FastPaths

Write = Callable[[Response], None]


class InstantWrites:
    """Answers the writes that need no waiting (I1, I5), for one server's entrance."""

    def __init__(self, entrance: FastPaths) -> None:
        self.entrance = entrance
        self.jc = entrance.jc
        self.limit = min(self.jc.settings.max_body_bytes, HIGH_WATER_LIMIT)  # I2

    def takes(self, scope: Scope) -> bool:
        """Whether the request, by its head, may be a write answered here."""
        if scope["method"] != "POST":
            return False
        path = self.entrance.own_path(scope)
        if path is None or not self.entrance.plain(scope):
            return False
        if any(name == b"x-forwarded-for" for name, _ in scope["headers"]):
            return False  # I4
        if path.startswith(DURABLE_PREFIX):
            return declared_body(scope, self.limit)
        return PUBLISH.match(path) is not None and declared_json_body(scope, self.limit)

    def answer(self, scope: Scope, body: bytes, write: Write) -> bool:
        """Answer the write in ``body`` through ``write``; false when it goes the usual way
        (I1), nothing having been done."""
        path = self.entrance.own_path(scope) or ""
        if path.startswith(DURABLE_PREFIX):
            return self._append(scope, path[len(DURABLE_PREFIX) :], body, write)
        return self._publish(scope, body, write)

    def _publish(self, scope: Scope, body: bytes, write: Write) -> bool:
        plain = plain_items(body)
        if plain is None or self.jc.hub.tracing is not None:
            return False
        items, batch = plain
        connection = HTTPConnection(scope)
        principal = self.jc.credentials.resolve_known(connection)
        if principal is None or isinstance(principal, Unresolved):
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

    def _append(self, scope: Scope, stream: str, body: bytes, write: Write) -> bool:
        request = Request(scope)  # its headers; the body is read already
        principal = self.jc.credentials.resolve_known(request)
        if isinstance(principal, Unresolved):
            return False
        request_id = incoming_id(scope) or new_request_id()
        token = REQUEST_ID.set(request_id)
        try:
            try:
                response = append_now(self.jc, request, principal, stream, body)
                if response is None:
                    return False
            except Exception:
                response = unexpected_error_response(scope["method"], scope["path"])
            response.raw_headers.append((HEADER, request_id.encode()))
            write(response)
            return True
        finally:
            REQUEST_ID.reset(token)
