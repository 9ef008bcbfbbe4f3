"""The stream fast path: ``GET /api/events`` and ``GET /api/jobs/{id}/events`` answered in
front of the framework's routing.

A stream is a long-lived request. Through FastAPI's routing it keeps every layer of the request
alive for as long as it lasts (the router, the dependency solver's exit stacks, the exception
wrappers, each with a frame and a wrapper around ``send``): about 10 KB and five function calls
per write, per connection, for nothing a stream uses after it started. This middleware, the
innermost of ours, answers those routes itself with the same functions the FastAPI routes call
(credential resolution, ``open_events_stream``, ``Jobcast.job_stream``, the JSON error
bodies), so behaviour is one definition with two entrances; the FastAPI routes stay for the
OpenAPI schema and for apps that mount the router without :meth:`Jobcast.install`.

Outer middlewares (CORS, the header-size limit, an embedding app's own) still see the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jobcast.errors import JobcastError
from jobcast.server.credentials import resolve_principal
from jobcast.server.errors import jobcast_error_response
from jobcast.server.events_api import open_events_stream, resume_id

if TYPE_CHECKING:
    from jobcast.server.app import Jobcast

EVENTS_PATH = "/api/events"
JOBS_PREFIX, JOB_EVENTS_SUFFIX = "/api/jobs/", "/events"


def job_id_of(path: str) -> str | None:
    """The id in ``/api/jobs/{id}/events``, or ``None`` for any other path."""
    if not (path.startswith(JOBS_PREFIX) and path.endswith(JOB_EVENTS_SUFFIX)):
        return None
    job_id = path[len(JOBS_PREFIX) : -len(JOB_EVENTS_SUFFIX)]
    return job_id if job_id and "/" not in job_id else None


class FastStreams:
    """Pure ASGI: the two SSE routes, everything else to the app."""

    def __init__(self, app: ASGIApp, jc: Jobcast) -> None:
        self.app = app
        self.jc = jc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        job_id = None if path == EVENTS_PATH else job_id_of(path)
        if path != EVENTS_PATH and job_id is None:
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        jc = self.jc
        try:
            principal = await resolve_principal(jc, connection)
            if job_id is None:
                response: Response = await open_events_stream(jc, connection, principal)
            else:
                response = await jc.job_stream(job_id, principal, resume_id(connection))
        except JobcastError as exc:
            await jobcast_error_response(exc)(scope, receive, send)
            return
        await response(scope, receive, send)
