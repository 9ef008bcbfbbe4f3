"""Browser protection: CORS, CSRF for cookie sessions, and Origin checks on WebSockets.

CSRF uses the double-submit pattern: the session login sets a readable ``jobcast_csrf`` cookie
and returns its value; a state-changing request authenticated by the session cookie must echo it
in ``X-CSRF-Token`` and come from an allowed origin. Bearer and ticket requests are exempt: a
browser never attaches those by itself. (A small check of our own rather than asgi-csrf: it has
to know which credential authenticated the request, which only this layer knows.)
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp

from jobcast.config import Settings
from jobcast.errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: The Durable Streams protocol's headers (``/v1/stream``), allowed and exposed to browsers.
STREAM_REQUEST_HEADERS = (
    "If-None-Match",
    "Stream-Seq",
    "Stream-TTL",
    "Stream-Expires-At",
    "Stream-Closed",
    "Producer-Id",
    "Producer-Epoch",
    "Producer-Seq",
)
STREAM_RESPONSE_HEADERS = (
    "ETag",
    "Location",
    "Stream-Next-Offset",
    "Stream-Cursor",
    "Stream-Up-To-Date",
    "Stream-Closed",
    "Stream-TTL",
    "Stream-Expires-At",
    "Stream-SSE-Data-Encoding",
    "Producer-Epoch",
    "Producer-Seq",
    "Producer-Expected-Seq",
    "Producer-Received-Seq",
)

#: ``JOBCAST_CORS_ORIGINS=dev``: the usual front-end dev servers on this machine.
DEV_ORIGINS = tuple(
    f"http://{host}:{port}"
    for host in ("localhost", "127.0.0.1")
    for port in (3000, 4200, 5173, 8080)
)


def allowed_origins(settings: Settings) -> tuple[str, ...]:
    origins: list[str] = []
    for origin in settings.cors_origins:
        origins.extend(DEV_ORIGINS if origin == "dev" else [origin.rstrip("/")])
    return tuple(dict.fromkeys(origins))


def cors_layer(settings: Settings) -> Callable[[ASGIApp], ASGIApp] | None:
    """The CORS middleware for ``JOBCAST_CORS_ORIGINS`` (``None`` when there are none)."""
    origins = allowed_origins(settings)
    if not origins:
        return None
    wildcard = "*" in origins
    return functools.partial(
        CORSMiddleware,
        allow_origins=list(origins),
        # Never "*" together with credentials: a wildcard origin gets no cookies.
        allow_credentials=not wildcard,
        allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],  # PUT: sharing a job
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "Last-Event-ID",
            "X-CSRF-Token",
            *STREAM_REQUEST_HEADERS,
        ],
        expose_headers=["X-CSRF-Token", "Retry-After", *STREAM_RESPONSE_HEADERS],
        max_age=600,
    )


def origin_allowed(settings: Settings, connection: HTTPConnection) -> bool:
    """Whether the request's Origin (if any) is this server itself or an allowed origin."""
    origin = connection.headers.get("origin")
    if origin is None:  # not a browser, or a same-origin GET: nothing to check
        return True
    origin = origin.rstrip("/")
    own = f"{connection.url.scheme.replace('ws', 'http')}://{connection.url.netloc}"
    return origin == own or origin in allowed_origins(settings)


def check_csrf(settings: Settings, connection: HTTPConnection) -> None:
    """Refuse a cookie-authenticated, state-changing request without the CSRF proof."""
    if connection.scope["type"] == "websocket":
        if not origin_allowed(settings, connection):
            raise Forbidden("this origin may not open WebSockets here")
        return
    method = connection.scope.get("method", "GET")
    path = connection.url.path
    if method in SAFE_METHODS or path.startswith(tuple(settings.csrf_exempt_paths)):
        return
    if not origin_allowed(settings, connection):
        raise Forbidden("cross-site request refused (Origin not allowed)")
    expected = connection.cookies.get("jobcast_csrf", "")
    presented = connection.headers.get("x-csrf-token", "")
    # Compared as bytes: compare_digest raises TypeError on a str with non-ASCII characters
    # (a 500), and a header may carry any byte.
    if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Forbidden("missing or wrong X-CSRF-Token header for this cookie session")
