"""The one place where errors become HTTP responses: always JSON, never a traceback.

Body: ``{"error": "<code>", "message": "<human sentence>"}`` plus ``detail`` for validation
errors and ``reason`` for authentication failures.

jobcast's routes answer their own errors (:class:`JobcastRoute`), so an application that
installs them keeps its own exception handlers for everything else; the standalone server also
installs the same handlers app-wide (:func:`install_error_handlers`), for paths no route has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from jobcast.errors import JobcastError, RateLimited, Unauthorized
from jobcast.server.http.credentials import explain_refusal

logger = logging.getLogger("jobcast.server")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status, headers=headers)


async def _jobcast_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response_for(request, exc)


def error_response_for(request: Request, exc: Exception) -> JSONResponse:
    """The response for any exception a route raised (call it while handling ``exc``)."""
    if isinstance(exc, JobcastError):
        return jobcast_error_response(exc, request.scope)
    if isinstance(exc, RequestValidationError):
        return _validation_response(exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_response(exc)
    return unexpected_error_response(request.method, request.url.path)


def jobcast_error_response(
    exc: JobcastError, scope: MutableMapping[str, Any] | None = None
) -> JSONResponse:
    """The response for one of our own errors (also used outside the framework's handlers);
    with the request's ``scope``, a missing credential may be explained (credentials.C1)."""
    if scope is not None:
        exc = explain_refusal(exc, scope)
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        extra["reason"] = exc.reason
        headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{exc.reason}"'
        )
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return error_response(exc.status_code, exc.code, exc.message, headers, **extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response_for(request, exc)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error_response(422, "invalid_input", message, detail=detail)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response_for(request, exc)


def _http_response(exc: StarletteHTTPException) -> JSONResponse:
    unparsable = _unparsable_body(exc)
    if unparsable is not None:
        detail = [{"loc": ["body"], "msg": unparsable, "type": "json_invalid"}]
        return error_response(422, "invalid_input", unparsable, detail=detail)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body, for the failures it reports as a bare 400
    ("There was an error parsing the body") rather than as malformed JSON, which is what
    they are to a client: a 422 like any other. It chains the parser's own error."""
    if exc.status_code != 400:
        return None
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return "the JSON body is not valid UTF-8"
    if isinstance(exc.__cause__, RecursionError):
        return "the JSON body is nested too deeply"
    return None


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response_for(request, exc)


def unexpected_error_response(method: str, path: str) -> JSONResponse:
    """The response for an exception nobody expected: logged with its traceback (so call it
    while handling the exception), a generic 500 to the client. Also used outside the
    framework's handlers."""
    logger.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobcastError, _jobcast_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


class ErrorBody(BaseModel):
    """Every error jobcast answers (the OpenAPI schema of its 4xx and 5xx bodies)."""

    error: str = Field(description="A stable code: `not_found`, `invalid_input`, ...")
    message: str = Field(description="A sentence for people.")
    reason: str | None = Field(
        None, description="For 401: why the credential was refused (`token_expired`, ...)."
    )
    detail: list[dict[str, Any]] | None = Field(
        None, description="For 422: each invalid field (`loc`, `msg`, `type`)."
    )


_ERRORS = {
    400: "The request is not valid HTTP or JSON jobcast can read.",
    401: "No credential, or one that does not verify (`reason` says which).",
    403: "The credential may not do this.",
    404: "No such resource, or not one the caller may see.",
    409: "The request conflicts with the resource's state.",
    413: "The body or an event is over its limit.",
    422: "A field is invalid (`detail` lists them).",
    429: "Rate limited: retry after `Retry-After` seconds.",
    503: "A backend is unavailable, or the server is draining: retry.",
}
#: The error responses every jobcast route documents, with jobcast's error body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ErrorBody,
        "description": text,
        # Errors are JSON on every route, streams included (whose own type is SSE).
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for status, text in _ERRORS.items()
}


def operation_id(route: APIRoute) -> str:
    """A readable OpenAPI operation id: the route function's name (``submit``, ``get_job``)."""
    return route.name


class JobcastRoute(APIRoute):
    """A route that turns its own errors into jobcast's JSON errors, whatever handlers the
    application has: jobcast's routes need no app-wide handler, and install none."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response_for(request, exc)

        return handle


def jobcast_router(**options: Any) -> APIRouter:
    """A router for jobcast's routes: they answer their own errors (:class:`JobcastRoute`),
    document them with jobcast's error body, and have readable operation ids."""
    return APIRouter(
        route_class=JobcastRoute,
        responses=ERROR_RESPONSES,
        generate_unique_id_function=operation_id,
        **options,
    )
