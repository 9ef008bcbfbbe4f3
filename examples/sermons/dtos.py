"""The wire format the React front end already parses: event DTOs and video DTOs.

Every event's data carries its own ``type`` and ``timestamp`` (ISO 8601, milliseconds, ``Z``),
as the front end's ``VideoStatusEventDTO`` and ``HeartbeatEventDTO`` do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    VIDEO_STATUS = "video.status"
    SUMMARY_READY = "summary.ready"
    ERROR = "error"
    HEARTBEAT = "heartbeat"


class VideoStatus(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"


#: jobcast job states in the front end's vocabulary (README: "also called").
STATUS_OF_STATE = {
    "queued": VideoStatus.QUEUED,
    "running": VideoStatus.PROCESSING,
    "succeeded": VideoStatus.PROCESSED,
    "failed": VideoStatus.FAILED,
    "cancelled": VideoStatus.FAILED,
}


def timestamp() -> str:
    """Now, as the front end expects it: ``2025-11-05T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def video_topic(video_id: str) -> str:
    """The jobcast topic of one video's events; subscribers filter on it."""
    return f"videos/{video_id}"


def video_status_event(
    video_id: str, status: VideoStatus, progress: int | None, message: str
) -> dict[str, Any]:
    return {
        "type": EventType.VIDEO_STATUS.value,
        "timestamp": timestamp(),
        "video_id": video_id,
        "status": status.value,
        "progress": progress,
        "message": message,
    }


def summary_ready_event(video_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": EventType.SUMMARY_READY.value,
        "timestamp": timestamp(),
        "video_id": video_id,
        **summary,
    }


def error_event(video_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "type": EventType.ERROR.value,
        "timestamp": timestamp(),
        "video_id": video_id,
        "code": code,
        "message": message,
    }


def heartbeat_event() -> dict[str, Any]:
    return {"type": EventType.HEARTBEAT.value, "timestamp": timestamp()}


def video_dto(job: dict[str, Any]) -> dict[str, Any]:
    """A video as the videos API shows it, from the jobcast job that processes it."""
    params = job["params"]
    result = job.get("result") or {}
    error = job.get("error") or {}
    return {
        "id": job["id"],
        "title": result.get("title")
        or params.get("title")
        or f"YouTube video {params['youtube_id']}",
        "youtube_id": params["youtube_id"],
        "status": STATUS_OF_STATE[job["state"]].value,
        "progress": round(job["progress"]),
        "message": error.get("message") or job.get("message"),
        "duration": result.get("duration"),
        "created_at": job["created_at"],
        "channel_id": params.get("channel_id"),
        "summary": result.get("summary"),
    }
