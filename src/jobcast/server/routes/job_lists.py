"""``GET /api/jobs/live``: a live job list (SSE), ``server/streams/job_list.py``."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from jobcast.auth import Principal
from jobcast.jobs.model import JobState
from jobcast.server.http.errors import jobcast_router
from jobcast.server.routes.jobs import query_tags
from jobcast.server.streams.job_list import MAX_LIST_JOBS, JobFilter, open_job_list
from jobcast.server.streams.sse import EventStreamResponse

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

LIST_DOC: dict[int | str, dict[str, object]] = {
    200: {
        "description": "Server-Sent Events: a `snapshot` of each matching job, then `synced`; "
        "then a `snapshot` whenever a matching job changes or appears and `removed` when one "
        "stops matching or is no longer readable. A reconnect starts afresh.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def job_lists_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["jobs"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.get(
        "/api/jobs/live",
        status_code=200,
        response_class=EventStreamResponse,
        responses=LIST_DOC,
        summary="Watch every job that matches a filter (a live job list, SSE)",
    )
    async def live_jobs(
        principal: principal_dep,
        tag: Annotated[list[str] | None, Query(description="Every one must match.")] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[list[JobState] | None, Query(description="Any one matches.")] = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIST_JOBS, description="Jobs listed at start (newest).")
        ] = 200,
    ) -> Response:
        job_filter = JobFilter(query_tags(tag), kind, tuple(state or ()))
        return await open_job_list(jc, principal, job_filter, limit)

    return router
