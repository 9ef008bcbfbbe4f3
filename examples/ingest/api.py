"""``POST /api/ingest``, ``GET /api/status/{job_id}`` and ``WS /ws/status/{job_id}?token=...``.

``POST /api/ingest`` takes ``metadata`` (a JSON object, sent as JSON text) as a JSON body
``{"metadata": "..."}``, as form fields, or as multipart with a ``file``, which is streamed to
disk and hashed (SHA-256) as it arrives. It answers ``202 {"job_id", "status"}``. Every route
needs a bearer token (``Authorization`` header; ``?token=`` on the WebSocket); a job is visible
to the one who submitted it (and to admin and service tokens).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse

from examples.ingest.pipeline import KIND
from examples.ingest.status import job_status, render_ws
from jobcast import InvalidInput, Jobcast, NotFound, Principal
from jobcast.jobs import Job
from jobcast.server.http.uploads import Received


def parse_metadata(value: Any) -> dict[str, Any]:
    """The metadata as a JSON object: sent as JSON text (the front end's way) or an object."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    return value


def ingest_router(jc: Jobcast) -> APIRouter:
    router = APIRouter(tags=["ingest"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.post("/api/ingest", status_code=202, summary="Start an ingestion job")
    async def ingest(request: Request, principal: principal_dep) -> JSONResponse:
        subject = principal.subject if principal else ""
        jc.policy.check_job(principal, Job(id="new", kind=KIND, owner=subject), "submit")
        await jc.limiter.hit("submit", principal, request)
        content_type = request.headers.get("content-type", "")
        received = Received()
        metadata: Any = None
        try:
            if content_type.startswith("multipart/form-data"):
                received = await jc.receive_upload(request)
                metadata = received.fields.get("metadata")
            elif content_type.startswith("application/x-www-form-urlencoded"):
                field = (await request.form()).get("metadata")
                metadata = field if isinstance(field, str) else None
            else:
                body = orjson.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise InvalidInput('send {"metadata": "<JSON text>"}')
                metadata = body.get("metadata")
            params = {"metadata": parse_metadata(metadata)}
            job = await jc.runner.submit(
                KIND, params, subject, input=received.input, upload=received.upload
            )
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}") from None
        finally:
            received.discard()  # a no-op once the runner took the file
        return JSONResponse({"job_id": job.id, "status": job_status(job.to_dict())["status"]}, 202)

    @router.get("/api/status/{job_id}", summary="An ingestion job's status")
    async def status(job_id: str, principal: principal_dep) -> dict[str, Any]:
        job = await jc.runner.get(job_id)
        if job is None or job.kind != KIND:
            raise NotFound(f"no job {job_id!r}")
        jc.policy.check_job(principal, job, "read")
        return job_status(job.to_dict())

    @router.websocket("/ws/status/{job_id}")
    async def status_socket(websocket: WebSocket, job_id: str) -> None:
        """Status messages as the job progresses; closed (1000) once it has finished."""
        await jc.job_socket(websocket, job_id, kind=KIND, render=render_ws)

    return router
