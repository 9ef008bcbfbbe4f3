"""``POST /api/batches``: submit many jobs at once, all or none (``jobs/batches.py``)."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from jobcast.auth import Principal
from jobcast.errors import InvalidInput
from jobcast.jobs.batches import MAX_BATCH
from jobcast.jobs.metadata import validate_metadata
from jobcast.jobs.model import Job
from jobcast.jobs.submit_options import FIELDS, SubmitOptions, parse_options
from jobcast.jobs.tags import validate_tags
from jobcast.server.http.errors import jobcast_router
from jobcast.server.routes.jobs import job_body, job_links, read_json

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["jobs"],
                    "properties": {
                        "jobs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BATCH,
                            "items": {
                                "type": "object",
                                "required": ["kind"],
                                "properties": {"kind": {"type": "string"}, "params": {}},
                            },
                        },
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "metadata": {"type": "object"},
                        "allow_failures": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


def _item(index: int, value: Any) -> tuple[str, Any, SubmitOptions]:
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise InvalidInput(f'jobs[{index}]: send {{"kind": "...", "params": {{...}}}}')
    extra = set(value) - {"kind", "params", *FIELDS}
    if extra:
        raise InvalidInput(f"jobs[{index}]: unexpected fields: {', '.join(sorted(extra))}")
    try:
        return value["kind"], value.get("params"), parse_options(value)
    except InvalidInput as exc:
        raise InvalidInput(f"jobs[{index}]: {exc.message}") from None


def batches_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["jobs"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.post(
        "/api/batches",
        status_code=202,
        summary="Submit a batch of jobs (all or none); its parent job follows them",
        openapi_extra=BATCH_BODY,
    )
    async def submit_batch(request: Request, principal: principal_dep) -> Response:
        subject = principal.subject if principal else ""
        jc.policy.check_job(principal, Job(id="new", kind="", owner=subject), "submit")
        await jc.limiter.hit("submit", principal, request)
        body = await read_json(request, jc.settings.max_body_bytes)
        if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
            raise InvalidInput('send {"jobs": [{"kind": "...", "params": {...}}, ...]}')
        extra = set(body) - {"jobs", "tags", "metadata", "allow_failures"}
        if extra:
            raise InvalidInput(f"unexpected fields: {', '.join(sorted(extra))}")
        if not 0 < len(body["jobs"]) <= MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} jobs")
        allow_failures = body.get("allow_failures", False)
        if not isinstance(allow_failures, bool):
            raise InvalidInput("allow_failures must be true or false")
        items = [_item(index, value) for index, value in enumerate(body["jobs"])]
        parent, children = await jc.runner.submit_batch(
            subject,
            items,
            tags=validate_tags(body.get("tags")),
            metadata=validate_metadata(body.get("metadata")),
            allow_failures=allow_failures,
        )
        links = job_links(request, parent.id)
        answer = {**job_body(request, parent), "jobs": [job_body(request, j) for j in children]}
        return JSONResponse(answer, 202, headers={"Location": links["self"]})

    return router
