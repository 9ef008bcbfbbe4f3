"""The SSE routes, ``GET /api/events``, ``GET /api/jobs/{id}/events`` and the Durable Streams
``GET /v1/stream/{path}?live=sse``, for the fast entrance (``fast_paths.py``), and the paths
of the two WebSocket routes it answers too.

A stream is a long-lived request, and every layer it passes keeps a suspended frame (and often
a wrapper around ``send``) alive for as long as the stream lasts: through FastAPI's routing that
was about 10 KB per connection and five function calls per write. These routes are opened here
with the same functions the FastAPI routes call (credential resolution, ``open_events_stream``,
``job_sse.job_event_stream``, the JSON error bodies), so behaviour is one definition with two
entrances; the FastAPI routes stay for the OpenAPI schema and for apps that mount the router
without ``Jobcast.install``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from jobcast.errors import JobcastError
from jobcast.server.http.errors import jobcast_error_response, unexpected_error_response
from jobcast.server.routes.durable_streams import answer as answer_stream
from jobcast.server.routes.events import open_events_stream, resume_id
from jobcast.server.routes.table import JOB_STREAM
from jobcast.server.streams.job_sse import job_event_stream
from jobcast.server.streams.writer import StreamWriter

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

#: The scope extension under which a connection offers to carry an open stream itself
#: (``native.py``, N1).
NATIVE_STREAM = "jobcast.native_stream"


async def open_fast_stream(jc: Runtime, scope: Scope, path: str) -> Response:
    """The response for a stream request: the stream, or the JSON error that refuses it.

    Its own call, so that nothing it parsed (headers, query, the connection) stays referenced
    by the caller's frame for the stream's whole life."""
    connection = HTTPConnection(scope)
    try:
        principal = await jc.credentials.resolve(connection)
        job_id = JOB_STREAM.match(path)
        if job_id is None:
            return await open_events_stream(jc, connection, principal)
        return await job_event_stream(jc, job_id, principal, resume_id(connection))
    except JobcastError as exc:
        return jobcast_error_response(exc, scope)
    except Exception:  # as the framework would: nothing outside catches it (fast_paths.F3)
        return unexpected_error_response(scope["method"], scope["path"])


async def durable_answer(jc: Runtime, scope: Scope, path: str, receive: Receive) -> Response:
    """``GET /v1/stream/{path}?live=sse`` (the stream) and ``POST /v1/stream/{path}`` (an
    append), or the answer that refuses them: the route's own function
    (``durable_streams.answer``)."""
    request = Request(scope, receive)
    try:
        principal = await jc.credentials.resolve(request)
    except JobcastError as exc:
        return jobcast_error_response(exc, scope)
    return await answer_stream(jc, request, principal, path)


class Carried(Protocol):
    """An open stream a connection can carry: its headers, and its writer into a sink."""

    raw_headers: list[tuple[bytes, bytes]]

    def writer(self, sink: Any) -> StreamWriter[Any, bytes]: ...


class StreamCarrier(Protocol):
    """A connection that writes responses itself (``native_streams.StreamProtocol``)."""

    def adopt(self, scope: MutableMapping[str, Any], response: Carried) -> bool: ...

    def reply(self, scope: MutableMapping[str, Any], response: Response) -> bool: ...


def carrier(scope: MutableMapping[str, Any]) -> StreamCarrier | None:
    """The connection offering to write this request's response itself, if any."""
    extensions = scope.get("extensions")
    return None if extensions is None else extensions.get(NATIVE_STREAM)
