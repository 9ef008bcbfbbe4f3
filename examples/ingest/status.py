"""The status of an ingestion job, as ``GET /api/status/{job_id}`` and the WebSocket send it."""

from __future__ import annotations

from typing import Any

from jobcast import JobUpdate

STATUS_OF_STATE = {
    "queued": "queued",
    "running": "processing",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}
JOB_TYPES = frozenset({"snapshot", "progress", "state", *STATUS_OF_STATE, "succeeded"})


def job_status(job: dict[str, Any]) -> dict[str, Any]:
    upload = job.get("input") or {}
    error = job.get("error") or {}
    return {
        "job_id": job["id"],
        "status": STATUS_OF_STATE[job["state"]],
        "progress": round(job["progress"], 1),
        "stage": job.get("stage"),
        "message": error.get("message") or job.get("message"),
        "filename": upload.get("filename"),
        "size": upload.get("size"),
        "sha256": upload.get("sha256"),
        "metadata": job["params"].get("metadata", {}),
        "result": job.get("result"),
        "created_at": job["created_at"],
        "updated_at": job["updated_at"],
    }


def render_ws(update: JobUpdate) -> Any:
    """One status message per step; a finished job's snapshot is left to its final message."""
    if update.type not in JOB_TYPES:
        return None
    if update.type == "snapshot" and update.job["state"] in ("succeeded", "failed", "cancelled"):
        return None
    return job_status(update.job)
