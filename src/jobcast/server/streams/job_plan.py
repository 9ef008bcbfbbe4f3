"""How a job's stream starts (its plan), shared by its SSE stream and its WebSocket.

Decisions (cited as J1..J4):

J1. A fresh stream sends the job's published snapshot, whose id is the hub id of the newest
    event it reflects (``Job.last_event_id``, live.L1), and subscribes to the job's topic
    resuming after that id. Events published while the stream was being set up come from the
    replay, later ones live, none twice (hub.H2). No event is ever older than the snapshot, so
    a watcher's progress never goes backwards.
J2. A resume (``Last-Event-ID``) sends no snapshot, only what the client missed. If history
    cannot cover it (another epoch, trimmed), the stream starts afresh with a snapshot.
J3. A finished job is answered at once without a subscription: the snapshot and the terminal
    event (a fresh client), or what the client missed up to the terminal event (a resume).
    Either way the stream then ends. A resume that missed nothing (the client already has
    the terminal event) is a 204, the one answer that stops a plain ``EventSource`` from
    reconnecting for ever.
J4. An application may render a job's stream in its own format (``job_frames.py``):
    each step is handed over as a :class:`JobUpdate` carrying the whole job as it is after that
    event (a ``progress`` event only carries what changed, so :class:`JobView` merges it into
    the last snapshot, as the JavaScript client's ``watchJob`` does). Ids, replay, the snapshot
    and the end after the terminal event stay jobcast's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from jobcast.auth import Principal
from jobcast.brokers.base import Replay
from jobcast.errors import NotFound
from jobcast.events import Event, EventId
from jobcast.jobs.model import TERMINAL_STATES, Job, job_topic
from jobcast.server.http.credentials import stream_owner
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

TERMINAL_TYPES = frozenset(state.value for state in TERMINAL_STATES)
#: Event types whose data is the whole job (a ``progress`` event's data is only what changed).
WHOLE_JOB_TYPES = frozenset(
    {"snapshot", "state", "retrying", "waiting", "resumed", *TERMINAL_TYPES}
)


def is_terminal_event(event: Event) -> bool:
    """Whether ``event`` ends a job's stream."""
    return event.type in TERMINAL_TYPES


@dataclass(slots=True)
class JobStreamPlan:
    """What to send on a job's stream."""

    job: Job
    #: Send the snapshot first (J1), else it is a resume (J2).
    snapshot: bool
    #: Live events; ``None`` when the job is finished and the stream ends after ``events``.
    subscription: Subscription | None = None
    replay: Replay | None = None
    #: For a finished job: the events to send before the stream ends (J3).
    events: list[Event] = field(default_factory=list)
    #: For a finished job: also send its terminal event, rebuilt from the snapshot (J3).
    terminal: bool = False

    @property
    def snapshot_id(self) -> str | None:
        return self.job.last_event_id

    def snapshot_json(self) -> str:
        return orjson.dumps(self.job.to_dict()).decode()


async def plan_job_stream(
    jc: Runtime,
    job_id: str,
    principal: Principal | None,
    last_event_id: str | None,
    *,
    kind: str | None = None,
    transport: str = "sse",
) -> JobStreamPlan:
    """Authorise the caller and set up the stream of job ``job_id`` (of ``kind``, if given)."""
    job = await jc.runner.get(job_id)
    if job is None or (kind is not None and job.kind != kind):
        raise NotFound(f"no job {job_id!r}")
    jc.policy.check_job(principal, job, "read")
    hub = jc.hub
    patterns = (TopicPattern(job_topic(job.id), None),)
    allow = jc.policy.job_stream_filter(principal, job)  # unsharing stops the stream's events
    epoch = hub.broker.epoch
    if job.terminal:  # J3
        after = EventId.parse(last_event_id) if last_event_id else None
        if after is not None:
            missed = await hub.broker.replay(patterns, after, hub.options.max_replay)
            if missed.gap is None:
                return JobStreamPlan(job, snapshot=False, events=_until_terminal(missed.events))
        return JobStreamPlan(_current(job, epoch), snapshot=True, terminal=True)
    if last_event_id:  # J2
        subscription, replay = await hub.subscribe(
            patterns,
            last_event_id=last_event_id,
            allow=allow,
            transport=transport,
            **stream_owner(principal),
        )
        if replay is not None and replay.gap is None:
            return JobStreamPlan(job, snapshot=False, subscription=subscription, replay=replay)
        subscription.close(CloseReason.CLIENT)
        hub.unsubscribe(subscription)
    known = EventId.parse(job.last_event_id) if job.last_event_id else None  # J1
    resume_after = str(known) if known and known.epoch == epoch else f"{epoch}-0"
    subscription, replay = await hub.subscribe(
        patterns,
        last_event_id=resume_after,
        allow=allow,
        transport=transport,
        **stream_owner(principal),
    )
    if replay is not None and replay.gap is not None:
        replay = None  # history cannot tell what came after: the snapshot is the best we have
    return JobStreamPlan(
        _current(job, epoch), snapshot=True, subscription=subscription, replay=replay
    )


def _current(job: Job, epoch: str) -> Job:
    """The job, without an event id from another history (it would make resumes reset)."""
    known = EventId.parse(job.last_event_id) if job.last_event_id else None
    if known is None or known.epoch != epoch:
        job = job.copy()
        job.last_event_id = None
    return job


def _until_terminal(events: list[Event]) -> list[Event]:
    for index, event in enumerate(events):
        if is_terminal_event(event):
            return events[: index + 1]
    return events
