"""The session status the front end shows, and how a job's stream becomes its events.

SSE events ``progress``, ``complete`` and ``error``, each with ``session_id``, ``status``,
``progress``, ``message`` and ``updated_at`` (``error`` adds ``error``); the WebSocket sends the
same data as ``{"event": ..., "data": ...}``. Heartbeats are ``: heartbeat`` comments.
"""

from __future__ import annotations

import math
from typing import Any

from jobcast import JobUpdate

HEARTBEAT = b": heartbeat\n\n"
JOB_TYPES = frozenset({"snapshot", "progress", "state", "succeeded", "failed", "cancelled"})


def heartbeat() -> bytes:
    return HEARTBEAT


def session_status(job: dict[str, Any]) -> dict[str, Any]:
    """A session's status, from its job (as ``GET /api/jobs/{id}`` shows it)."""
    state = job["state"]
    status = {
        "queued": "queued",
        "running": job.get("stage") or "processing",
        "succeeded": "processed",
        "failed": "failed",
        "cancelled": "cancelled",
    }[state]
    message = job.get("message") or "Waiting to be processed"
    body: dict[str, Any] = {
        "session_id": job["id"],
        "status": status,
        "progress": math.floor(job["progress"]),
        "message": message,
        "updated_at": job["updated_at"],
    }
    if state == "succeeded":
        body["message"] = "Session processing complete"
    elif state in ("failed", "cancelled"):
        body["message"] = "Processing failed" if state == "failed" else "Processing cancelled"
        body["error"] = (job.get("error") or {}).get("message") or state
    return body


def event_name(update: JobUpdate) -> str | None:
    """The front end's event for one step of the job's stream (``None``: nothing to send)."""
    if update.type not in JOB_TYPES:
        return None  # the handler's own events are not part of this API
    if update.type == "snapshot" and update.job["state"] in ("succeeded", "failed", "cancelled"):
        return None  # a finished session: its final event follows at once
    if update.type == "succeeded":
        return "complete"
    if update.terminal:
        return "error"
    return "progress"


def render_sse(update: JobUpdate) -> tuple[str, Any] | None:
    name = event_name(update)
    return None if name is None else (name, session_status(update.job))


def render_ws(update: JobUpdate) -> Any:
    name = event_name(update)
    return None if name is None else {"event": name, "data": session_status(update.job)}
