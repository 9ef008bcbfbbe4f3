"""The shapes the jobs API documents (OpenAPI): the job snapshot, its page, the submission body
and the SSE stream. The routes build their answers themselves (``jobs.py``); these declare them."""

# No ``from __future__ import annotations``: pydantic reads these annotations at runtime.

from typing import Any

from pydantic import BaseModel, Field

from jobcast.jobs.model import JobState


class JobLinks(BaseModel):
    self: str
    events: str = Field(description="SSE stream of the job's events.")
    ws: str = Field(description="WebSocket stream of the job's events.")
    cancel: str


class JobSnapshot(BaseModel):
    """A job as every surface shows it (timestamps are ISO 8601, UTC)."""

    id: str
    kind: str
    state: JobState
    progress: float = Field(description="0 to 100; never goes backwards.")
    stage: str | None
    message: str | None
    eta_seconds: float | None = Field(description="Estimated from the progress rate.")
    seq: int = Field(description="Sequence number of the job's newest event.")
    owner: str
    params: dict[str, Any]
    created_at: str
    started_at: str | None
    updated_at: str
    finished_at: str | None
    input: dict[str, Any] | None = Field(description="filename, size, sha256, content_type.")
    result: Any = None
    error: dict[str, str] | None = Field(description="type and message, when failed.")
    attempts: int = Field(description="Runs started so far (1 while the first runs).")
    max_attempts: int = Field(description="Runs the job may have in all (retries included).")
    next_attempt_at: str | None = Field(
        default=None, description="While a retry waits: when the next attempt starts."
    )
    last_error: dict[str, str] | None = Field(
        default=None, description="The latest failed attempt's error (type and message)."
    )
    scheduled_for: str | None = Field(default=None, description="A delayed job's start time.")
    priority: int = Field(default=0, description="Higher runs first among queued jobs.")
    rerun_of: str | None = Field(default=None, description="The job this one re-runs.")
    streams: list[dict[str, Any]] | None = Field(
        default=None,
        description="`GET /api/jobs/{id}`: its output streams (`ctx.stream`): name, path, "
        "content_type, length, closed; read at `/v1/stream/{path}`.",
    )
    readers: list[str] = Field(default_factory=list, description="Subjects granted read access.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="What the handler reports beyond progress."
    )
    tags: list[str] = Field(default_factory=list, description="Labels given at submit.")
    waiting: dict[str, Any] | None = Field(
        default=None,
        description="The input the job waits for: name, schema, prompt, timeout_at.",
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="Inputs given, by name.")
    links: JobLinks


class JobList(BaseModel):
    jobs: list[JobSnapshot]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


SCHEDULING: dict[str, Any] = {
    "priority": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0},
    "delay_seconds": {"type": "number", "minimum": 0, "maximum": 2592000},
    "run_at": {"type": "string", "format": "date-time", "description": "With its offset."},
    "max_attempts": {"type": "integer", "minimum": 1, "maximum": 25},
    "tags": {
        "type": "array",
        "maxItems": 10,
        "items": {"type": "string", "pattern": "^[A-Za-z0-9:._/@=+-]{1,64}$"},
    },
    "metadata": {"type": "object", "description": "The job's initial metadata."},
}

SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": {"type": "string", "examples": ["demo"]},
                        "params": {"type": "object", "examples": [{"steps": 5, "delay": 0.2}]},
                        **SCHEDULING,
                        "idempotency_key": {"type": "string", "maxLength": 255},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["kind", "file"],
                    "properties": {
                        "kind": {"type": "string", "examples": ["ingest"]},
                        "params": {"type": "string", "description": "JSON object, as text."},
                        "file": {"type": "string", "format": "binary"},
                        **SCHEDULING,
                    },
                }
            },
        },
    }
}

SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `snapshot` first, then `progress`, `state` and "
        "custom events, then `succeeded`, `failed` or `cancelled` with the final snapshot; "
        "then the stream ends. Resume with `Last-Event-ID`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
