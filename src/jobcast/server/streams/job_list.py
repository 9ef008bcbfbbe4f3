"""A live job list: one stream of ``snapshot`` events for every job that matches a filter.

``GET /api/jobs/live?tag=&kind=&state=`` (SSE). It is a subscription to ``jobs/*`` like any
other (the hub's replay-then-live, its access filter, heartbeats, eviction), framed by
:class:`JobListView`, which turns each job event into the whole job after it.

Decisions (cited as V1..V6):

V1. The stream starts with the current matching jobs (the same query as ``GET /api/jobs``:
    the caller's own jobs, every job for a service or admin), newest first, each as a
    ``snapshot``, then one ``synced`` event (``{"count": n}``); after it, every change of a
    matching job is a ``snapshot`` of the whole job, and a job that stops matching (its state
    left the filter, or the caller lost access to it) is a ``removed`` event (``{"id",
    "reason"}``). A client keeps a map by id: replace on ``snapshot``, drop on ``removed``.
V2. No gap between the listing and live events: the subscription resumes from before the
    listing (the oldest listed live job's last event, at most ``REPLAY_MARGIN`` positions
    back), and every event at or below the ``seq`` the view already knows of its job is
    skipped, so nothing is missed or repeated. A replay history cannot cover is skipped: the
    listing is then the best there is.
V3. Access is the hub's ``jobs/*`` filter (``policy.subscription_filter``): an ordinary user
    receives only events of jobs they own or were granted, including jobs created later. A
    job shared with the caller appears at once (its ``shared`` event, ``access.A6``). Unsharing
    stops its events at once (the hub forgets cached answers); the view also re-checks the
    granted jobs it shows (never the caller's own) at most once a second and on heartbeats,
    and sends ``removed`` with reason ``access``.
V4. A resume (``Last-Event-ID``) starts afresh (V1): a list is state, not a log, so sending the
    current jobs again (and ``synced``, after which the client drops what was not re-sent) is
    both exact and bounded, where replaying every job event since the id would not be.
V5. The view keeps a reference to each shown job's snapshot, shared with every other open
    list that shows the same job at the same ``seq`` (``jobs/snapshots.py``, S1-S4): what a
    watcher holds of its own is one dict slot per job (about 210 KiB for 10,000 jobs), and
    100 watchers of the same 10,000 jobs hold one copy of them (``bench.list_cost``). Jobs
    that appear later add to it and those removed leave it.
V6. The listing is bounded by ``limit``, at most ``MAX_LIST_JOBS`` (10,000); at the limit the
    newest jobs are listed and ``synced`` says how many (older ones are read by paging
    ``GET /api/jobs``). A ``limit`` past it is refused (422). A list of 10,000 costs about
    0.4 s of one core to open, the store's query and its rows most of it (``bench.list_cost``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from jobcast.auth import Principal
from jobcast.brokers.base import Replay
from jobcast.errors import InvalidInput, Unauthorized
from jobcast.events import Event, EventId
from jobcast.jobs.access import SHARED
from jobcast.jobs.metadata import fold_metadata
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.snapshots import JobSnapshots, Snapshot
from jobcast.server.http.credentials import stream_owner
from jobcast.server.streams.job_plan import WHOLE_JOB_TYPES
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.server.streams.topic_stream import stream_response
from jobcast.stores.base import JobQuery
from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern
from jobcast.wire import HEARTBEAT, ServerSentEvent

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

JOBS = (TopicPattern.parse("jobs/*"),)
#: One thing a list says: ``(type, data, id)``, encoded by each carrier's framing.
Item = tuple[str, Any, str | None]
#: How far before the head a list's subscription resumes at most (V2).
REPLAY_MARGIN = 1000
#: How often the view re-checks the granted jobs it shows (V3), in seconds.
ACCESS_CHECK_INTERVAL = 1.0
#: The most jobs a list's listing holds (V6).
MAX_LIST_JOBS = 10_000


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a list shows: all of ``tags``, ``kind`` if given, one of ``states`` if any."""

    tags: tuple[str, ...] = ()
    kind: str | None = None
    states: tuple[JobState, ...] = ()

    def matches(self, job: dict[str, Any]) -> bool:
        if self.kind is not None and job.get("kind") != self.kind:
            return False
        if self.states and job.get("state") not in self.states:
            return False
        tags = job.get("tags") or ()
        return all(tag in tags for tag in self.tags)


class JobListView:
    """The jobs a list shows, and the frames that keep a client's copy equal to it (V1-V3)."""

    def __init__(
        self,
        job_filter: JobFilter,
        jobs: Collection[Job],
        *,
        subject: str | None,
        allowed: Callable[[str], bool] | None,
        snapshots: JobSnapshots,
    ) -> None:
        self.filter = job_filter
        self.subject = subject
        #: The hub's uncached access filter (None: the caller sees every job).
        self.allowed = allowed
        self._share = snapshots.share
        #: The shown jobs, by id: shared snapshots, never changed in place (V5, snapshots.S2).
        self.jobs: dict[str, Snapshot] = {}
        self._listed: list[Snapshot] = []
        for job in jobs:
            snapshot = job.to_dict()
            if job_filter.matches(snapshot):
                shared = self._share(snapshot)
                self.jobs[shared["id"]] = shared  # its id string, shared too (V5)
                self._listed.append(shared)
        self._checked = time.monotonic()

    def opening(self) -> list[Item]:
        """The listed jobs and ``synced`` (V1)."""
        items: list[Item] = [("snapshot", job, None) for job in self._listed]
        items.append(("synced", {"count": len(self._listed)}, None))
        self._listed = []
        return items

    def close(self) -> None:
        """Let go of the shown jobs: their shared snapshots go with the last list that holds
        them (snapshots.S3)."""
        self.jobs.clear()
        self._listed = []

    def items(self, event: Event) -> list[Item]:
        """What one ``jobs/{id}`` event means for the list: a snapshot, a removal, or nothing
        (and removals of jobs the caller lost access to, V3)."""
        removed = self._check_access() if self.allowed is not None else []
        job_id, _, sub = event.topic[5:].partition("/")
        shared = sub == SHARED and event.type == SHARED  # access.A6: a grant, V3
        if sub and (not shared or job_id in self.jobs):
            return removed
        try:
            data = orjson.loads(event.data_json)
        except orjson.JSONDecodeError:
            return removed
        if not isinstance(data, dict) or (shared and data.get("id") != job_id):
            return removed
        known = self.jobs.get(job_id)
        seq = data.get("seq")
        if known is not None and isinstance(seq, int) and seq <= known.get("seq", 0):
            return removed  # V2: the view already has it
        if event.type in WHOLE_JOB_TYPES or shared:
            job = data
        elif known is not None and event.type == "progress":
            job = {**known, **data}
        elif known is not None and event.type == "metadata":
            job = fold_metadata(known, data)
        else:  # a custom event, or a delta of a job the view does not show
            if known is not None and isinstance(seq, int):
                self._show(job_id, self._share({**known, "seq": seq}))  # snapshots.S2: a new one
            return removed
        if self.filter.matches(job):
            shown = self._show(job_id, self._share(job))
            return [*removed, ("snapshot", shown, event.id)]
        if known is not None:
            del self.jobs[job_id]
            return [*removed, ("removed", {"id": job_id, "reason": "filter"}, event.id)]
        return removed

    def _show(self, job_id: str, snapshot: Snapshot) -> Snapshot:
        # V5: keyed by the snapshot's own id string when it is the job's (one string for all
        # lists, not one per list); by the topic's when a publisher made them differ.
        key = snapshot.get("id")
        self.jobs[key if key == job_id else job_id] = snapshot
        return snapshot

    def quiet(self) -> list[Item]:
        """At a heartbeat: removals of jobs the caller lost access to (V3)."""
        return self._check_access(force=True) if self.allowed is not None else []

    def _check_access(self, *, force: bool = False) -> list[Item]:
        """``removed`` for the granted jobs the caller may no longer read (V3)."""
        now = time.monotonic()
        if not force and now - self._checked < ACCESS_CHECK_INTERVAL:
            return []
        self._checked = now
        allowed = self.allowed
        assert allowed is not None
        gone = [
            job_id
            for job_id, job in self.jobs.items()
            if job.get("owner") != self.subject and not allowed(f"jobs/{job_id}")
        ]
        for job_id in gone:
            del self.jobs[job_id]
        return [("removed", {"id": job_id, "reason": "access"}, None) for job_id in gone]


def sse_bytes(items: list[Item]) -> bytes:
    """Items as SSE frames; a shared snapshot's encoded once (snapshots.S4)."""
    return b"".join(_sse_frame(kind, data, event_id) for kind, data, event_id in items)


def _sse_frame(kind: str, data: Any, event_id: str | None) -> bytes:
    if isinstance(data, Snapshot):
        if event_id is None and kind == "snapshot":
            return data.opening_frame
        return ServerSentEvent(data=data.json, event=kind, id=event_id).encode()
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=kind, id=event_id).encode()


def item_json(data: Any) -> str:
    """An item's data as JSON; a shared snapshot's encoded once (snapshots.S4)."""
    return data.json if isinstance(data, Snapshot) else orjson.dumps(data).decode()


@dataclass(slots=True)
class JobListPlan:
    subscription: Subscription
    replay: Replay | None
    view: JobListView


async def plan_job_list(
    jc: Runtime,
    principal: Principal | None,
    job_filter: JobFilter,
    limit: int,
    *,
    transport: str = "sse",
) -> JobListPlan:
    """Authorise the caller, list the matching jobs and subscribe (V1-V3, V6)."""
    if not 1 <= limit <= MAX_LIST_JOBS:
        raise InvalidInput(f"limit is 1 to {MAX_LIST_JOBS}")
    # A stream ticket may open it when it covers jobs/* (EventSource sends no header).
    allow = jc.policy.subscription_filter(principal, JOBS)
    if principal is None:
        raise Unauthorized("a job list needs a bearer token", reason="missing_token")
    scope = None if principal.is_privileged else principal.subject  # V1: as GET /api/jobs
    hub = jc.hub
    head = hub.broker.head
    query = JobQuery(scope, job_filter.states, job_filter.kind, limit, tags=job_filter.tags)
    page = await jc.runner.list_jobs(query)
    start = head.position
    for job in page.jobs:  # V2: from before the oldest listed live job's last event
        known = EventId.parse(job.last_event_id) if job.last_event_id else None
        if not job.terminal and known is not None and known.epoch == head.epoch:
            start = min(start, known.position)
    start = max(start, head.position - REPLAY_MARGIN, 0)
    subscription, replay = await hub.subscribe(
        JOBS,
        last_event_id=f"{head.epoch}-{start}",
        allow=allow,
        transport=transport,
        **stream_owner(principal),
    )
    if replay is not None and replay.gap is not None:
        replay = None  # V2: the listing is the best there is
    view = JobListView(
        job_filter,
        page.jobs,
        subject=principal.subject,
        allowed=allow,
        snapshots=jc.job_snapshots,
    )
    return JobListPlan(subscription, replay, view)


async def open_job_list(
    jc: Runtime, principal: Principal | None, job_filter: JobFilter, limit: int
) -> EventStreamResponse:
    """The SSE stream of a live job list (V1-V4)."""
    plan = await plan_job_list(jc, principal, job_filter, limit)
    view = plan.view
    return stream_response(
        jc,
        plan.subscription,
        plan.replay,
        None,  # V4: a resume starts afresh
        sse_bytes(view.opening()),
        event_frame=lambda event: sse_bytes(view.items(event)),
        heartbeat=lambda: sse_bytes(view.quiet()) or HEARTBEAT,
    )
