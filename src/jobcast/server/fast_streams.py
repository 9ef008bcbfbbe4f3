"""The stream fast path: ``GET /api/events`` and ``GET /api/jobs/{id}/events`` answered in
front of the framework.

A stream is a long-lived request, and every layer it passes keeps a suspended frame (and often
a wrapper around ``send``) alive for as long as the stream lasts: through FastAPI's routing that
was about 10 KB per connection and five function calls per write. This pure ASGI wrapper
answers those routes itself with the same functions the FastAPI routes call (credential
resolution, ``open_events_stream``, ``Jobcast.job_stream``, the JSON error bodies), so behaviour
is one definition with two entrances; the FastAPI routes stay for the OpenAPI schema and for
apps that mount the router without :meth:`Jobcast.install`.

Decisions (cited as F1..F3):

F1. It takes only the requests that need nothing from the layers it skips: headers within the
    431 limits, and no ``Origin`` when CORS is configured (the CORS middleware must answer
    those). Anything else goes to the app, whose middleware stack answers as for any request.
F2. It does the one thing every response needs from the skipped layers itself: the request id
    (``request_id.py``), in the logs and in the ``X-Request-ID`` header.
F3. ``install()`` puts it outside jobcast's other middlewares, and ``jobcast serve`` wraps the
    whole application in a second instance, so that on the standalone server a stream does not
    even pass FastAPI's and Starlette's entry frames (about 3 KB per connection together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jobcast.errors import JobcastError
from jobcast.server.browser import allowed_origins
from jobcast.server.credentials import resolve_principal
from jobcast.server.errors import jobcast_error_response
from jobcast.server.events_api import open_events_stream, resume_id
from jobcast.server.limits import headers_over_limit
from jobcast.server.logs import REQUEST_ID
from jobcast.server.request_id import HEADER, incoming_id, new_request_id

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
        self.cors = bool(allowed_origins(jc.settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not self._takes(scope):
            await self.app(scope, receive, send)
            return
        request_id = incoming_id(scope) or new_request_id()  # F2
        token = REQUEST_ID.set(request_id)
        try:
            # Opened in a call of its own so that nothing it parsed (headers, query, the
            # connection) stays referenced by this frame for the stream's whole life.
            response = await self._open(scope)
            response.raw_headers.append((HEADER, request_id.encode()))
            await response(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)

    def _takes(self, scope: Scope) -> bool:  # F1
        path: str = scope["path"]
        if path != EVENTS_PATH and job_id_of(path) is None:
            return False
        if headers_over_limit(scope["headers"]):
            return False
        return not (self.cors and any(name == b"origin" for name, _ in scope["headers"]))

    async def _open(self, scope: Scope) -> Response:
        connection = HTTPConnection(scope)
        jc = self.jc
        try:
            principal = await resolve_principal(jc, connection)
            job_id = job_id_of(scope["path"])
            if job_id is None:
                return await open_events_stream(jc, connection, principal)
            return await jc.job_stream(job_id, principal, resume_id(connection))
        except JobcastError as exc:
            return jobcast_error_response(exc)
