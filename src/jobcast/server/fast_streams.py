"""The two SSE routes, ``GET /api/events`` and ``GET /api/jobs/{id}/events``, for the fast
entrance (``fast_paths.py``), and the paths of the two WebSocket routes it answers too.

A stream is a long-lived request, and every layer it passes keeps a suspended frame (and often
a wrapper around ``send``) alive for as long as the stream lasts: through FastAPI's routing that
was about 10 KB per connection and five function calls per write. These routes are opened here
with the same functions the FastAPI routes call (credential resolution, ``open_events_stream``,
``Jobcast.job_stream``, the JSON error bodies), so behaviour is one definition with two
entrances; the FastAPI routes stay for the OpenAPI schema and for apps that mount the router
without :meth:`Jobcast.install`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Scope

from jobcast.errors import JobcastError
from jobcast.server.credentials import resolve_principal
from jobcast.server.errors import jobcast_error_response, unexpected_error_response
from jobcast.server.events_api import open_events_stream, resume_id
from jobcast.server.sse import EventStreamResponse

if TYPE_CHECKING:
    from jobcast.server.app import Jobcast

EVENTS_PATH = "/api/events"
#: The scope extension under which a connection offers to carry an open stream itself
#: (``native_streams.py``, N1).
NATIVE_STREAM = "jobcast.native_stream"
JOBS_PREFIX, JOB_EVENTS_SUFFIX = "/api/jobs/", "/events"
EVENTS_SOCKET_PATH, JOB_SOCKET_PREFIX = "/ws/events", "/ws/jobs/"


def job_id_of(path: str) -> str | None:
    """The id in ``/api/jobs/{id}/events``, or ``None`` for any other path."""
    if not (path.startswith(JOBS_PREFIX) and path.endswith(JOB_EVENTS_SUFFIX)):
        return None
    job_id = path[len(JOBS_PREFIX) : -len(JOB_EVENTS_SUFFIX)]
    return job_id if job_id and "/" not in job_id else None


def job_socket_id(path: str) -> str | None:
    """The id in ``/ws/jobs/{id}``, or ``None`` for any other path."""
    if not path.startswith(JOB_SOCKET_PREFIX):
        return None
    job_id = path[len(JOB_SOCKET_PREFIX) :]
    return job_id if job_id and "/" not in job_id else None


def is_stream_path(path: str) -> bool:
    return path == EVENTS_PATH or job_id_of(path) is not None


async def open_fast_stream(jc: Jobcast, scope: Scope) -> Response:
    """The response for a stream request: the stream, or the JSON error that refuses it.

    Its own call, so that nothing it parsed (headers, query, the connection) stays referenced
    by the caller's frame for the stream's whole life."""
    connection = HTTPConnection(scope)
    try:
        principal = await resolve_principal(jc, connection)
        job_id = job_id_of(scope["path"])
        if job_id is None:
            return await open_events_stream(jc, connection, principal)
        return await jc.job_stream(job_id, principal, resume_id(connection))
    except JobcastError as exc:
        return jobcast_error_response(exc, scope)
    except Exception:  # as the framework would: nothing outside catches it (fast_paths.F3)
        return unexpected_error_response(scope["method"], scope["path"])


class StreamCarrier(Protocol):
    """A connection that writes responses itself (``native_streams.StreamProtocol``)."""

    def adopt(self, scope: MutableMapping[str, Any], response: EventStreamResponse) -> bool: ...

    def reply(self, scope: MutableMapping[str, Any], response: Response) -> bool: ...


def carrier(scope: MutableMapping[str, Any]) -> StreamCarrier | None:
    """The connection offering to write this request's response itself, if any."""
    extensions = scope.get("extensions")
    return None if extensions is None else extensions.get(NATIVE_STREAM)
