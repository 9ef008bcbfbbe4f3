"""``POST /api/jobs/{id}/input``: answer a running job that waits for input
(``jobs/input_wait.py``, N1); the runner's ``give_input`` stores it and wakes the job if it is
parked (N9)."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING, Annotated, Any

import jsonschema
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from jobcast.auth import Principal
from jobcast.errors import InvalidInput, NotFound
from jobcast.jobs.input_wait import valid_name
from jobcast.server.http import exact_json
from jobcast.server.http.errors import jobcast_router
from jobcast.server.routes.job_docs import JobSnapshot
from jobcast.server.routes.jobs import job_body

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

INPUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "value"],
                    "properties": {
                        "name": {"type": "string", "examples": ["approve"]},
                        "value": {"description": "Checked against the request's schema."},
                    },
                }
            }
        },
    }
}


def check_value(schema: Any, value: Any) -> None:
    """422 with the reason when ``value`` does not satisfy the JSON ``schema``."""
    if not isinstance(schema, dict) or not schema:
        return
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except jsonschema.exceptions.SchemaError:
        raise InvalidInput("the job's input schema is not a valid JSON schema") from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        raise InvalidInput(
            f"the value does not fit the schema{' at ' + where if where else ''}: "
            f"{error.message[:300]}"
        )


def job_inputs_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["jobs"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    @router.post(
        "/api/jobs/{job_id}/input",
        status_code=202,
        response_model=JobSnapshot,
        summary="Give a running job the input it waits for (owner, a reader granted input, "
        "service or admin)",
        openapi_extra=INPUT_BODY,
    )
    async def give_input(job_id: str, request: Request, principal: principal_dep) -> Response:
        job = await jc.runner.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        responder = False  # a reader it was shared with "with input" (sql.Q11)
        if principal is not None and principal.subject in job.readers:
            responder = await jc.runner.may_give_input(job, principal.subject)
        jc.policy.check_input(principal, job, responder=responder)
        body = exact_json.loads(await request.body())
        if not isinstance(body, dict) or set(body) != {"name", "value"}:
            raise InvalidInput('send {"name": "...", "value": ...}')
        name = valid_name(body["name"])
        waiting = job.waiting or {}
        if waiting.get("name") == name:
            check_value(waiting.get("schema"), body["value"])  # before anything is stored
        subject = principal.subject if principal is not None else ""
        await jc.runner.give_input(job, name, body["value"], subject)
        return JSONResponse(job_body(request, job), 202)

    return router
