"""``/api/jobs``: submit, poll, list, cancel, delete and watch jobs (SSE)."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import re
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from jobcast.auth import Principal
from jobcast.errors import InvalidInput, NotFound, PayloadTooLarge
from jobcast.jobs.idempotency import REPLAYED_HEADER, Idempotency, request_hash, valid_key
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.rerun import rerun
from jobcast.jobs.submit_options import FIELDS, SubmitOptions, parse_options
from jobcast.jobs.tags import MAX_TAGS, valid_tag
from jobcast.server.http import exact_json
from jobcast.server.http.errors import jobcast_router
from jobcast.server.http.uploads import Received, receive_multipart
from jobcast.server.routes.job_docs import SSE_DOC, SUBMIT_BODY, JobList, JobSnapshot
from jobcast.server.routes.table import JOB_STREAM
from jobcast.server.streams.job_sse import job_event_stream
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.stores.base import JobQuery

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

_CURSOR = re.compile(r"[0-9a-f-]{1,40}")  # task ids of external queues are UUIDs


#: Subjects one job may be shared with.
MAX_READERS = 100


def job_links(request: Request, job_id: str) -> dict[str, str]:
    # Where jobcast is mounted, as the client sees it (a reverse proxy's root path, and the
    # prefix of install(app, prefix=...)): what precedes /api/jobs in this request's path.
    path: str = request.scope["path"]
    root = path[: path.rfind("/api/jobs")]
    base = f"{root}/api/jobs/{job_id}"
    return {
        "self": base,
        "events": f"{base}/events",
        "ws": f"{root}/ws/jobs/{job_id}",
        "cancel": f"{base}/cancel",
    }


def job_body(request: Request, job: Job) -> dict[str, Any]:
    return {**job.to_dict(), "links": job_links(request, job.id)}


async def read_json(request: Request, limit: int) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
    return exact_json.loads(bytes(body))


def _submission(value: Any) -> tuple[str, Any, SubmitOptions]:
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise InvalidInput('send {"kind": "...", "params": {...}}')
    extra = set(value) - {"kind", "params", "idempotency_key", *FIELDS}
    if extra:
        raise InvalidInput(f"unexpected fields: {', '.join(sorted(extra))}")
    return value["kind"], value.get("params"), parse_options(value)


def jobs_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["jobs"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    async def readable(job_id: str, principal: Principal | None, action: Any) -> Job:
        job = await jc.runner.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        jc.policy.check_job(principal, job, action)
        return job

    @router.post(
        "/api/jobs",
        status_code=202,
        response_model=JobSnapshot,
        responses={
            200: {
                "model": JobSnapshot,
                "description": "A retry with an Idempotency-Key used before for the same "
                "request: the first submission's job.",
                "headers": {
                    REPLAYED_HEADER: {
                        "description": "`true`: answered again",
                        "schema": {"type": "string"},
                    }
                },
            }
        },
        summary="Submit a job (JSON, or multipart with a file)",
        openapi_extra=SUBMIT_BODY,
    )
    async def submit(
        request: Request,
        principal: principal_dep,
        idempotency_header: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Submit at most once: a retry with this key returns the first job.",
            ),
        ] = None,
    ) -> Response:
        subject = principal.subject if principal else ""
        jc.policy.check_job(principal, Job(id="new", kind="", owner=subject), "submit")
        await jc.limiter.hit("submit", principal, request)
        settings = jc.settings
        content_type = request.headers.get("content-type", "").lower()
        received = Received()
        fields: dict[str, Any]
        if content_type.startswith("multipart/form-data"):
            received = await receive_upload(jc, request)
            try:
                kind = received.fields.get("kind", "")
                params_text = received.fields.get("params", "").strip()
                params = (
                    exact_json.loads(params_text.encode(), "the 'params' field")
                    if params_text
                    else {}
                )
                options = parse_options(received.fields, as_text=True)
                fields = dict(received.fields)
                key = valid_key(idempotency_header, received.fields.get("idempotency_key"))
            except InvalidInput:
                await received.remove()
                raise
        elif content_type.startswith("application/json") or not content_type:
            fields = await read_json(request, settings.max_body_bytes)
            kind, params, options = _submission(fields)
            key = valid_key(idempotency_header, fields.get("idempotency_key"))
        else:
            raise InvalidInput("send application/json or multipart/form-data")
        idempotency = None
        if key is not None:  # idempotency.I2: what the client sent, as it sent it
            sent = {name: fields.get(name) for name in ("kind", "params", *sorted(FIELDS))}
            sent["file"] = received.input.sha256 if received.input else None
            idempotency = Idempotency(key, request_hash(sent))
        tracing = jc.hub.tracing  # tracing.O5: the caller's trace
        traced = tracing.enter_request(request.headers) if tracing is not None else None
        try:
            job, created = await jc.runner.submit_keyed(
                kind,
                params,
                subject,
                idempotency,
                input=received.input,
                upload=received.upload,
                options=options,
            )
        finally:
            if tracing is not None:
                tracing.leave_request(traced)
            await received.remove()  # a no-op once the runner took the file
        links = job_links(request, job.id)
        headers = {"Location": links["self"]}
        if not created:  # idempotency.I2: the first submission's job, answered again
            headers[REPLAYED_HEADER] = "true"
        return JSONResponse(
            {**job.to_dict(), "links": links}, 202 if created else 200, headers=headers
        )

    @router.get("/api/jobs", response_model=JobList, summary="List jobs, newest first")
    async def list_jobs(
        request: Request,
        principal: principal_dep,
        state: Annotated[list[JobState] | None, Query(description="Repeat for several.")] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        owner: Annotated[
            str | None, Query(max_length=255, description="service/admin only.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")] = None,
        tag: Annotated[
            list[str] | None, Query(description="Only jobs with every one of these tags.")
        ] = None,
        parent: Annotated[
            str | None, Query(max_length=40, description="Only the jobs of this batch.")
        ] = None,
    ) -> Response:
        scope = jc.policy.job_list_owner(principal)
        if cursor is not None and _CURSOR.fullmatch(cursor) is None:
            raise InvalidInput("invalid cursor")
        query = JobQuery(
            scope or owner,
            tuple(state or ()),
            kind,
            limit,
            cursor,
            tags=query_tags(tag),
            parent=parent,
        )
        page = await jc.runner.list_jobs(query)
        return JSONResponse(
            {
                "jobs": [job_body(request, job) for job in page.jobs],
                "next_cursor": page.next_cursor,
            }
        )

    @router.get("/api/jobs/{job_id}", response_model=JobSnapshot, summary="Poll a job")
    async def get_job(job_id: str, request: Request, principal: principal_dep) -> Response:
        jc.policy.refuse_ticket(principal)  # polling is not a stream
        body = job_body(request, await readable(job_id, principal, "read"))
        # Its output streams (ctx.stream), served at /v1/stream/jobs/{id}/{name}.
        body["streams"] = [info.describe() for info in await jc.streams.listing(f"jobs/{job_id}/")]
        return JSONResponse(body)

    @router.post(
        "/api/jobs/{job_id}/cancel",
        response_model=JobSnapshot,
        summary="Cancel a queued or running job (409 once it has finished)",
    )
    async def cancel_job(job_id: str, request: Request, principal: principal_dep) -> Response:
        await readable(job_id, principal, "cancel")
        return JSONResponse(job_body(request, await jc.runner.cancel(job_id)))

    @router.post(
        "/api/jobs/{job_id}/rerun",
        status_code=202,
        response_model=JobSnapshot,
        summary="Run a job again as a new job linked by rerun_of (owner or admin only)",
    )
    async def rerun_job(job_id: str, request: Request, principal: principal_dep) -> Response:
        original = await readable(job_id, principal, "rerun")
        await jc.limiter.hit("submit", principal, request)
        job = await rerun(jc.runner, original)
        links = job_links(request, job.id)
        return JSONResponse(
            {**job.to_dict(), "links": links}, 202, headers={"Location": links["self"]}
        )

    @router.put(
        "/api/jobs/{job_id}/readers/{subject}",
        response_model=JobSnapshot,
        summary="Let another subject read and watch this job, and with ?input=true give it "
        "input (owner or admin only)",
    )
    async def grant_reader(
        job_id: str,
        subject: str,
        request: Request,
        principal: principal_dep,
        input: Annotated[
            bool, Query(description="May also answer the job's input requests.")
        ] = False,
    ) -> Response:
        await readable(job_id, principal, "grant")
        if not 0 < len(subject) <= 255 or not subject.isprintable() or subject.strip() != subject:
            raise InvalidInput(
                "the subject must be 1 to 255 printable characters, without spaces around it"
            )
        job = await jc.runner.change_readers(
            job_id, add=subject, limit=MAX_READERS, may_input=input
        )
        return JSONResponse(job_body(request, job))

    @router.delete(
        "/api/jobs/{job_id}/readers/{subject}",
        response_model=JobSnapshot,
        summary="Withdraw a subject's read access to this job (owner or admin only)",
    )
    async def revoke_reader(
        job_id: str, subject: str, request: Request, principal: principal_dep
    ) -> Response:
        await readable(job_id, principal, "grant")
        job = await jc.runner.change_readers(job_id, remove=subject, limit=MAX_READERS)
        return JSONResponse(job_body(request, job))

    @router.delete(
        "/api/jobs/{job_id}",
        status_code=204,
        summary="Delete a finished job and its upload (409 while it is queued or running)",
    )
    async def delete_job(job_id: str, principal: principal_dep) -> Response:
        await readable(job_id, principal, "delete")
        await jc.runner.delete(job_id)
        for info in await jc.streams.listing(f"jobs/{job_id}/"):  # its output goes with it
            await jc.streams.delete(info.path)
        return Response(status_code=204)

    @router.get(
        JOB_STREAM.path,
        status_code=200,
        response_class=EventStreamResponse,
        responses=SSE_DOC,
        summary="Watch a job as a Server-Sent Events stream",
    )
    async def job_events(
        job_id: str,
        principal: principal_dep,
        last_event_id: Annotated[
            str | None, Query(description="Resume after this id (if headers cannot be set).")
        ] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        return await job_event_stream(jc, job_id, principal, last_event_id_header or last_event_id)

    return router


def query_tags(tags: list[str] | None) -> tuple[str, ...]:
    """``?tag=`` values, checked as a submission's are (422 otherwise)."""
    if tags and len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags")
    return tuple(dict.fromkeys(valid_tag(tag) for tag in tags or ()))


async def receive_upload(runtime: "Runtime", request: Request) -> Received:
    """A multipart body streamed to the uploads directory, within the upload limits."""
    settings = runtime.settings
    return await receive_multipart(
        request,
        runtime.runner.options.uploads_dir,
        max_file=settings.max_upload_bytes,
        max_fields=settings.max_body_bytes,
        content_types=settings.upload_content_types,
    )
