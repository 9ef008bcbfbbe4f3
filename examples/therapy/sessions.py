"""The sessions API: record a session, and follow its processing by polling, SSE or WebSocket.

- ``POST /api/sessions``: multipart ``file`` (the recording) and ``patient_id`` (default: the
  caller) -> ``201`` with the session's status.
- ``GET /api/sessions/{session_id}/status``: the status, once.
- ``GET /api/sessions/{session_id}/status/stream``: SSE ``progress`` ... then ``complete`` or
  ``error``, after which the stream ends; a finished session answers its final event at once.
- ``/api/sessions/{session_id}/status/ws``: the same as WebSocket messages, then close 1000.

All with a JWT bearer token (``Authorization`` header; browsers' WebSockets may use ``?token=``
or a first message ``{"op": "auth", "token": ...}``). 401 without one, 404 for an unknown
session, 403 for someone else's.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from examples.therapy.access import SESSION_KIND, TherapyPolicy
from examples.therapy.status import heartbeat, render_sse, render_ws, session_status
from jobcast import InvalidInput, Jobcast, NotFound, Principal, Unauthorized
from jobcast.server.streams.sse import EventStreamResponse


def sessions_router(jc: Jobcast, policy: TherapyPolicy) -> APIRouter:
    router = APIRouter(prefix="/api/sessions", tags=["sessions"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    def authenticated(principal: Principal | None) -> Principal:
        # Before looking the session up, so that a caller without a token learns nothing.
        if principal is None:
            raise Unauthorized("sessions need a bearer token", reason="missing_token")
        return principal

    @router.post("", status_code=201, summary="Record a session: upload its recording")
    async def create_session(request: Request, principal: principal_dep) -> JSONResponse:
        caller = authenticated(principal)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInput("send multipart/form-data with a 'file' (the recording)")
        received = await jc.receive_upload(request)
        try:
            patient = received.fields.get("patient_id") or caller.subject
            policy.check_new_session(caller, patient)
            if received.input is None:
                raise InvalidInput("the recording is missing (multipart 'file')")
            params = {"patient_id": patient}
            if received.fields.get("title"):
                params["title"] = received.fields["title"]
            job = await jc.runner.submit(
                SESSION_KIND, params, patient, input=received.input, upload=received.upload
            )
        finally:
            received.discard()  # a no-op once the runner took the file
        return JSONResponse(session_status(job.to_dict()), status_code=201)

    @router.get("/{session_id}/status", summary="A session's processing status")
    async def get_status(session_id: str, principal: principal_dep) -> dict[str, Any]:
        caller = authenticated(principal)
        job = await jc.runner.get(session_id)
        if job is None or job.kind != SESSION_KIND:
            raise NotFound(f"no session {session_id!r}")
        policy.check_job(caller, job, "read")
        return session_status(job.to_dict())

    @router.get(
        "/{session_id}/status/stream",
        response_class=EventStreamResponse,
        summary="Server-Sent Events: progress, then complete or error",
    )
    async def stream_status(
        session_id: str,
        principal: principal_dep,
        last_event_id: Annotated[str | None, Query(description="Resume after this id.")] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        caller = authenticated(principal)
        return await jc.job_stream(
            session_id,
            caller,
            last_event_id_header or last_event_id,
            kind=SESSION_KIND,
            render=render_sse,
            heartbeat=heartbeat,
        )

    @router.websocket("/{session_id}/status/ws")
    async def status_socket(websocket: WebSocket, session_id: str) -> None:
        await jc.job_socket(websocket, session_id, kind=SESSION_KIND, render=render_ws)

    return router
