"""The job: its lifecycle states and its snapshot, the one shape every surface shows.

States, and how common vocabularies map onto them::

    queued     PENDING, QUEUED, SUBMITTED, SCHEDULED, WAITING
    running    PROCESSING, STARTED, IN_PROGRESS, ACTIVE
    succeeded  PROCESSED, DONE, COMPLETED, SUCCESS, FINISHED
    failed     FAILED, ERROR, TIMED_OUT, CRASHED
    cancelled  CANCELLED, CANCELED, ABORTED, REVOKED

``queued -> running -> succeeded | failed | cancelled``; a queued job may also be cancelled
directly, and a running job that was interrupted by a restart may go back to ``queued`` when its
handler is declared safe to retry. Terminal states are final.

Waiting is always ``queued``: a job submitted for later (``scheduled_for``) and a job waiting
for its next attempt after a retryable failure (``next_attempt_at``, with ``last_error``) are
``queued`` until their time. A retry is ``running -> queued`` published as a ``retrying`` event
(not a ``state`` one), so a stream says why the job went back and never ends there; the next
attempt's ``state`` event (``running``, ``attempts`` + 1, progress 0) says progress restarted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: Event types a job's topic carries. The terminal ones are named after the terminal state.
JOB_EVENT_TYPES = frozenset(
    {"snapshot", "progress", "state", "retrying", *(s.value for s in TERMINAL_STATES)}
    | {"metadata", "waiting", "resumed"}  # metadata.py's deltas; input_wait.py's request, end
)


def job_topic(job_id: str) -> str:
    """The hub topic on which every event of a job is published."""
    return f"jobs/{job_id}"


def new_job_id() -> str:
    """A new id: 16 hex digits of the time in nanoseconds, then 6 random ones.

    Ids sort by creation time, so "newest first" is ``ORDER BY id DESC`` and a page cursor is
    simply the last id seen. They are valid topic segments and never need escaping.
    """
    return f"{time.time_ns():016x}{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class InputFile:
    """An uploaded file. ``filename`` is what the client called it: shown, never used as a path."""

    filename: str
    size: int
    sha256: str
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> InputFile:
        return cls(
            str(value["filename"]),
            int(value["size"]),
            str(value["sha256"]),
            str(value["content_type"]),
        )


@dataclass(slots=True)
class Job:
    """A job's state. The runner owns the live instance; everyone else sees copies."""

    id: str
    kind: str
    owner: str
    params: dict[str, Any] = field(default_factory=dict)
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    stage: str | None = None
    message: str | None = None
    eta_seconds: float | None = None
    #: Sequence number of the newest event published for this job (0: none yet).
    seq: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    input: InputFile | None = None
    result: Any = None
    #: ``{"type": ..., "message": ...}`` when the job failed.
    error: dict[str, str] | None = None
    attempts: int = 0
    #: Runs allowed in all (retries and restarts); 0 on jobs stored before there were retry
    #: policies: the server's ``job_max_attempts`` then applies.
    max_attempts: int = 0
    #: When the next attempt may start, while a retry waits (epoch seconds).
    next_attempt_at: float | None = None
    #: The error of the latest failed attempt, kept while it is retried.
    last_error: dict[str, str] | None = None
    #: When a delayed submission may start (epoch seconds); ``None``: at once.
    scheduled_for: float | None = None
    #: Higher runs first among queued jobs; equal priorities keep submission order.
    priority: int = 0
    #: The job this one re-runs (``POST /api/jobs/{id}/rerun``).
    rerun_of: str | None = None
    #: The hub id of the newest event published for this job, to resume its stream exactly.
    last_event_id: str | None = None
    #: Subjects the owner (or an admin) granted read access to: they may read and watch it.
    readers: list[str] = field(default_factory=list)
    #: The task queue that runs this job when it is not jobcast's own ("celery", "rq",
    #: "dramatiq"; ``jobcast.integrations``), so a cancel reaches it there. Not in the snapshot.
    runs_on: str | None = None
    #: What the handler reports beyond progress (``ctx.metadata``, ``metadata.py``): a JSON
    #: object, size-capped; a ``metadata`` event carries the keys each update changed.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Short labels given at submit (``tags.py``): ``GET /api/jobs?tag=`` and live lists.
    tags: list[str] = field(default_factory=list)
    #: The input the handler waits for (``ctx.wait_for_input``, ``input_wait.py``): its
    #: ``name``, JSON ``schema``, ``prompt`` and ``timeout_at``; ``None`` when not waiting.
    waiting: dict[str, Any] | None = None
    #: The inputs given so far, by name (replayed to a re-run handler).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: The batch this job belongs to (``batches.py``): a job whose ``runs_on`` is "batch".
    parent_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def not_before(self) -> float:
        """The earliest time a queued job may start: its schedule or its next attempt."""
        return max(self.scheduled_for or 0.0, self.next_attempt_at or 0.0)

    def copy(self) -> Job:
        return dataclasses.replace(
            self,
            readers=list(self.readers),
            metadata=dict(self.metadata),  # values are replaced, never changed in place
            tags=list(self.tags),
            inputs=dict(self.inputs),
        )

    def to_dict(self) -> dict[str, Any]:
        """The public snapshot (API responses and event data)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "progress": self.progress,
            "stage": self.stage,
            "message": self.message,
            "eta_seconds": self.eta_seconds,
            "seq": self.seq,
            "owner": self.owner,
            "params": self.params,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "finished_at": _iso(self.finished_at),
            "input": self.input.to_dict() if self.input else None,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "last_error": self.last_error,
            "scheduled_for": _iso(self.scheduled_for),
            "priority": self.priority,
            "rerun_of": self.rerun_of,
            "readers": self.readers,
            "metadata": self.metadata,
            "tags": self.tags,
            "waiting": self.waiting,
            "inputs": self.inputs,
            "parent_id": self.parent_id,
        }

    def progress_dict(self) -> dict[str, Any]:
        """The data of a ``progress`` event: only what progress changes."""
        return {
            "id": self.id,
            "seq": self.seq,
            "progress": self.progress,
            "stage": self.stage,
            "message": self.message,
            "eta_seconds": self.eta_seconds,
            "updated_at": _iso(self.updated_at),
        }

    def apply_progress(
        self, progress: float, message: str | None, stage: str | None, now: float
    ) -> None:
        """Record a progress report (never backwards) and re-estimate the ETA."""
        self.progress = max(self.progress, min(100.0, progress))
        if message is not None:
            self.message = message
        if stage is not None:
            self.stage = stage
        self.updated_at = now
        self.eta_seconds = estimate_eta(self.progress, self.started_at, now)


def estimate_eta(progress: float, started_at: float | None, now: float) -> float | None:
    """Seconds left at the average rate since the job started; ``None`` while unknown.

    The average over the whole run is steadier than the latest rate, which jumps with every
    uneven step; handlers with a slow start can report a stage instead of a misleading ETA.
    """
    if started_at is None or progress <= 0.0:
        return None
    if progress >= 100.0:
        return 0.0
    elapsed = max(0.0, now - started_at)
    return round(elapsed * (100.0 - progress) / progress, 3)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


#: A time as the snapshot writes it (ISO 8601, UTC, ``Z``), for events built elsewhere.
iso_time = _iso
