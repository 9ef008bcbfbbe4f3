"""What the client returns: job snapshots, pages of jobs, and the items a stream yields.

A stream yields :data:`StreamItem` values. Besides ordinary :class:`Event` objects there are two
in-band notices, yielded in order with the events so nothing is lost by a callback that raised:

- :class:`Reset`: the history could not cover a resume; events were missed. Reload your state
  (``client.get(job_id)``, say); the stream goes on from ``Reset.id``.
- :class:`Reauth`: the server ended the stream because the credential expired. Give the client
  a fresh token (``client.token = ...``, or construct it with a callable ``token``) before
  taking the next item; the stream then reconnects with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobcast.client._errors import ProtocolError
from jobcast.jobs.model import TERMINAL_STATES, JobState

#: The event types that end a job's stream (named after the terminal states).
TERMINAL_TYPES = frozenset(state.value for state in TERMINAL_STATES)


@dataclass(frozen=True, slots=True)
class Job:
    """A job snapshot, as ``GET /api/jobs/{id}`` returns it (timestamps are ISO 8601 text)."""

    id: str
    kind: str
    state: JobState
    progress: float = 0.0
    stage: str | None = None
    message: str | None = None
    eta_seconds: float | None = None
    seq: int = 0
    owner: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    input: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, str] | None = None
    attempts: int = 0
    max_attempts: int = 0
    #: While a retry waits: when the next attempt starts, and the failed attempt's error.
    next_attempt_at: str | None = None
    last_error: dict[str, str] | None = None
    #: A delayed job's start time.
    scheduled_for: str | None = None
    priority: int = 0
    #: The job this one re-runs.
    rerun_of: str | None = None
    #: What the handler reports beyond progress (``ctx.metadata``).
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    #: The input the job waits for (``name``, ``schema``, ``prompt``, ``timeout_at``).
    waiting: dict[str, Any] | None = None
    #: The inputs given so far, by name.
    inputs: dict[str, Any] = field(default_factory=dict)
    #: The batch this job belongs to.
    parent_id: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_STATES

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Job:
        """Build from the API's JSON; unknown fields (``links``, future ones) are ignored.

        Raises :class:`ProtocolError` for anything that is not a job (a server that is not
        jobcast answered, say).
        """
        if not isinstance(value, dict) or not all(key in value for key in ("id", "kind", "state")):
            raise ProtocolError("the server's answer is not a job (no 'id', 'kind' or 'state')")
        known = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        try:
            known["state"] = JobState(value["state"])
        except (ValueError, TypeError):
            raise ProtocolError(
                f"the server sent an unknown job state {value['state']!r}"
            ) from None
        return cls(**known)


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``list()``; pass ``next_cursor`` as ``cursor`` for the next one."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One event from a stream. ``id`` is ``None`` for snapshots made by polling."""

    type: str
    data: Any
    id: str | None = None
    #: True when the client made this event by polling because streaming was impossible.
    polled: bool = False

    @property
    def terminal(self) -> bool:
        """Whether this is a job's terminal event (``succeeded``, ``failed``, ``cancelled``)."""
        return self.type in TERMINAL_TYPES

    @property
    def job(self) -> Job | None:
        """The job snapshot carried by ``snapshot``, ``state``, ``retrying``, ``waiting``,
        ``resumed`` and terminal events, else ``None``."""
        carries = self.type in ("snapshot", "state", "retrying", "waiting", "resumed")
        carries = carries or self.terminal
        if carries and isinstance(self.data, dict):
            return Job.from_dict(self.data)
        return None


@dataclass(frozen=True, slots=True)
class Reset:
    """History could not cover the resume: events were missed (``reason`` says why)."""

    id: str | None
    reason: str
    last_event_id: str | None


@dataclass(frozen=True, slots=True)
class Reauth:
    """The credential expired; set a fresh token before taking the next item."""

    reason: str


#: What iterating a stream yields.
StreamItem = Event | Reset | Reauth
