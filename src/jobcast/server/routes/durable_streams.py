"""``/v1/stream/{path}``: output streams over the Durable Streams protocol.

PUT creates, POST appends (and closes), GET reads (catch-up, ``live=long-poll``,
``live=sse``: ``durable_reads.py``), HEAD describes, DELETE deletes. Who may do what is
``durable_access.py``; what a stream is, ``jobcast/outputs``. Forks and the reserved
subscription APIs (``__ds``) are not served.

Every answer, errors included, carries ``X-Content-Type-Options: nosniff`` and a
``Cross-Origin-Resource-Policy``; errors are jobcast's JSON error body with the protocol's
headers (``outputs/model.O5``).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, WebSocket
from starlette.responses import Response

from jobcast.auth import Principal
from jobcast.errors import JobcastError
from jobcast.outputs.model import (
    DEFAULT_CONTENT_TYPE,
    Appended,
    Producer,
    StreamError,
    StreamInfo,
    bad_request,
)
from jobcast.server.http.errors import error_response, jobcast_error_response, jobcast_router
from jobcast.server.routes import durable_access as access
from jobcast.server.routes import durable_reads as reads
from jobcast.server.routes import durable_socket
from jobcast.server.routes.sockets import overridden_caller
from jobcast.server.streams.durable_sse import holding

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

PREFIX = "/v1/stream/"
URL_SAFE = "/:@!$&'()*+,;=-._~"
PATH = PREFIX + "{path:path}"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


#: The protocol's operations: the route name (its OpenAPI operation id) and summary of each.
OPERATIONS = {
    "PUT": ("create_stream", "Create a stream (200 if the same one exists, 409 if it differs)"),
    "POST": ("append_to_stream", "Append to a stream, or close it (Stream-Closed: true)"),
    "GET": ("read_stream", "Read a stream: catch-up, live=long-poll or live=sse"),
    "HEAD": ("describe_stream", "A stream's tail offset, closing, TTL, without data"),
    "DELETE": ("delete_stream", "Delete a stream and its data"),
}


def durable_streams_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["streams"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    async def stream(path: str, request: Request, principal: principal_dep) -> Response:
        return await answer(jc, request, principal, path)

    @router.websocket(durable_socket.PATH)
    async def stream_socket(websocket: WebSocket, path: str) -> None:
        """A stream read live from ``?offset=`` (``durable_socket.py``)."""
        caller = await overridden_caller(jc, websocket)
        await durable_socket.serve_stream_socket(jc, websocket, path, caller)

    for method, (name, summary) in OPERATIONS.items():
        router.add_api_route(
            PATH,
            stream,
            methods=[method],
            name=name,
            summary=summary,
            response_class=Response,
        )
    return router


async def answer(
    jc: "Runtime", request: Request, principal: Principal | None, path: str
) -> Response:
    """The answer to any request for ``/v1/stream/{path}``, errors included (the route's, and
    the fast entrance's for SSE reads: ``serving/fast_streams.py``)."""
    try:
        response = await _answer(jc, request, principal, access.stream_path(path))
    except StreamError as exc:
        response = error_response(exc.status_code, exc.code, str(exc), headers=dict(exc.headers))
    except JobcastError as exc:
        response = jobcast_error_response(exc, request.scope)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _answer(
    jc: "Runtime", request: Request, principal: Principal | None, path: str
) -> Response:
    method = request.method
    if method in ("GET", "HEAD"):
        await access.check_read(jc, principal, path)
        if method == "HEAD":
            return await _head(jc, path)
        return await _read(jc, request, path, principal.subject if principal else "")
    access.check_write(jc, principal, path)
    if principal is not None:  # as a publish is (per subject and IP; privileged roles never)
        await jc.limiter.hit("publish", principal, request)
    if method == "PUT":
        return await _create(jc, request, path)
    if method == "POST":
        return await _append(jc, request, path)
    await jc.streams.delete(path)
    return Response(status_code=204)


async def _create(jc: "Runtime", request: Request, path: str) -> Response:
    ttl, expires_at = access.ttl_header(request)
    content_type = request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
    info, created = await jc.streams.create(
        path,
        content_type,
        ttl=ttl,
        expires_at=expires_at,
        closed=access.closed_header(request),
        body=await request.body(),
    )
    headers = _state(info, {"content-type": info.content_type})
    if created:
        url = request.url  # headers are Latin-1: the path as it travels, percent-encoded
        headers["Location"] = f"{url.scheme}://{url.netloc}{quote(url.path, safe=URL_SAFE)}"
    return Response(status_code=201 if created else 200, headers=headers)


def append_now(
    jc: "Runtime", request: Request, principal: Principal | None, path: str, body: bytes
) -> Response | None:
    """``answer`` for an append (``body`` read already) that needs nothing it would wait
    for: no rate limit to count (a privileged caller, or none on a public prefix), a store
    that commits at once (``StreamStore.append_now``). ``None`` when it cannot be answered
    so, with nothing done: then ``answer`` answers."""
    if principal is not None and not principal.is_privileged:
        return None
    try:
        path = access.stream_path(path)
        access.check_write(jc, principal, path)
        producer, close, content_type = _append_headers(request, body)
        appended = jc.streams.append_now(
            path,
            body,
            content_type=content_type,
            seq=request.headers.get("stream-seq"),
            producer=producer,
            close=close,
        )
        if appended is None:
            return None
        response = _appended(appended, producer, body)
    except StreamError as exc:
        response = error_response(exc.status_code, exc.code, str(exc), headers=dict(exc.headers))
    except JobcastError as exc:
        response = jobcast_error_response(exc, request.scope)
    response.headers.update(SECURITY_HEADERS)
    return response


def _append_headers(request: Request, body: bytes) -> tuple[Producer | None, bool, str | None]:
    """An append's producer, ``Stream-Closed`` and content type, checked against its body."""
    producer = access.producer_headers(request)
    close = access.closed_header(request)
    content_type = request.headers.get("content-type")
    if not body and not close:
        raise bad_request("an append needs a body (or Stream-Closed: true to close)")
    if body and not content_type:
        raise bad_request("an append needs a Content-Type")
    return producer, close, content_type


async def _append(jc: "Runtime", request: Request, path: str) -> Response:
    body = await request.body()
    producer, close, content_type = _append_headers(request, body)
    appended = await jc.streams.append(
        path,
        body,
        content_type=content_type,
        seq=request.headers.get("stream-seq"),
        producer=producer,
        close=close,
    )
    return _appended(appended, producer, body)


def _appended(appended: Appended, producer: Producer | None, body: bytes) -> Response:
    headers = _state(appended.info, {})
    if producer is None:
        return Response(status_code=204, headers=headers)
    headers["Producer-Epoch"] = str(producer.epoch)
    headers["Producer-Seq"] = str(appended.producer_seq)
    # 200: appended now; 204: a duplicate of an earlier append (protocol 5.2.1).
    fresh = appended.fresh and bool(body)
    return Response(status_code=200 if fresh else 204, headers=headers)


async def _head(jc: "Runtime", path: str) -> Response:
    info = await jc.streams.head(path)
    headers = _state(info, {"content-type": info.content_type, "Cache-Control": "no-store"})
    if info.ttl is not None:
        headers["Stream-TTL"] = str(info.ttl)
    if info.expires_at is not None:
        headers["Stream-Expires-At"] = access.expires_text(info.expires_at)
    return Response(status_code=200, headers=headers)


async def _read(jc: "Runtime", request: Request, path: str, subject: str) -> Response:
    incarnation, position = reads.start_of(request)
    live = request.query_params.get("live")
    if live is not None and "offset" not in request.query_params:
        raise bad_request("a live read needs an offset")
    if live == "long-poll":
        with jc.stream_reads.hold(subject):
            return await reads.long_poll(jc, request, path, incarnation, position)
    if live == "sse":
        hold = jc.stream_reads.hold(subject)
        hold.__enter__()  # left when the stream ends (durable_sse.D5)
        try:
            return await reads.open_sse(jc, request, path, incarnation, position, holding(hold))
        except BaseException:
            hold.__exit__(None, None, None)
            raise
    if live is not None:
        raise bad_request("live is long-poll or sse")
    result = await jc.streams.read(path, incarnation, position)
    return reads.catch_up(request, result, now=position is None, public=access.is_public(jc, path))


def _state(info: StreamInfo, headers: dict[str, str]) -> dict[str, str]:
    headers["Stream-Next-Offset"] = info.next_offset
    if info.closed:
        headers["Stream-Closed"] = "true"
    return headers
