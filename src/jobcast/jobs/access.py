"""Who may read each job, known without I/O, on every instance.

Wildcard subscriptions (``jobs/*``) are filtered per topic by a synchronous function called
from the hub's fan-out, which cannot query the store. So each instance keeps the owner and
readers of jobs in memory and keeps them current through the broker, which every instance
shares. Decisions (cited as A1..A6):

A1. Control events. With a shared broker, creating a job and changing its readers publish
    ``{"id", "owner", "readers"}`` on ``ACCESS_TOPIC``. The broker orders the announcement
    before the job's first event, so every instance knows a job's owner before any of its events
    reach a filter, and every instance applies a revoke before any later event. No client can
    publish or subscribe there (no valid topic starts with ``$``: topics.CONTROL_PREFIX), and
    the hub neither fans out nor replays control topics. Job snapshots carry the owner and
    readers too, but they are never trusted for this: anyone with a publish grant on a job's
    topic could forge one.
A2. A server that starts while jobs are queued or running learns them from the store
    (``warm``), after its hub started, so a job created in between is announced to it instead.
A3. A miss on the hot path (a job evicted from the bounded cache, or whose announcement failed)
    is looked up in the store in the background, at most ``LOOKUPS_IN_FLIGHT`` at once; once the
    job is known, cached per-subscription answers are dropped so its next event passes. Events
    of that job delivered before the answer arrives are not delivered to that stream.
A4. A replay is resolved before it is filtered: unknown jobs it touches are looked up first
    (at most ``MAX_REPLAY_LOOKUPS``), so a client that resumes on another instance gets the
    history of its jobs that this instance never saw.
A5. A grant or a revoke (``change_readers``) is written to the store, then to the job's live
    copy, then to this instance's filters (their cached answers are dropped at once), then
    announced (A1). One process applies its changes in the store's order.
A6. After a grant, the job's snapshot (its freshest copy here: live, else stored) is published
    as a ``shared`` event on ``jobs/{id}/shared``, after the announcement, so the new reader's
    open live lists (``jobs/*``) show the job at once rather than at its next whole-job event.
    A sub-topic, never the job's own: a job's stream keeps its events (and its terminal event
    last), and a list that already shows the job skips it (its ``seq`` is not newer).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from jobcast.errors import JobcastError, NotFound
from jobcast.events import Event, EventDraft, dumps
from jobcast.jobs.model import Job, JobState
from jobcast.topics import CONTROL_PREFIX

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.jobs.live import LiveJob
    from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.jobs")

#: The control topic that carries job access changes between instances (A1).
ACCESS_TOPIC = f"{CONTROL_PREFIX}access"
#: How many jobs' owners and readers to remember (live jobs are known besides these).
CACHE_SIZE = 100_000
#: Background store lookups at once (A3), and lookups before one replay is filtered (A4).
LOOKUPS_IN_FLIGHT = 64
MAX_REPLAY_LOOKUPS = 100
JOB_TOPIC_PREFIX = "jobs/"

#: A job's owner and the subjects granted read access to it.
Access = tuple[str, tuple[str, ...]]


class JobAccess:
    """The owner and readers of jobs, for stream filters; the hub's observer (A1-A4)."""

    def __init__(self, store: JobStore, hub: Hub, live: Callable[[str], LiveJob | None]) -> None:
        self.store = store
        self.hub = hub
        self._live = live
        self._known: collections.OrderedDict[str, Access] = collections.OrderedDict()
        #: Ids the store does not know (non-job topics under ``jobs/``): not looked up again.
        self._absent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lookups: dict[str, asyncio.Task[None]] = {}
        #: Only a shared broker has other instances to tell (the embedded default is one process).
        self.shared = hub.broker.shared
        self._changing = asyncio.Lock()

    def get(self, job_id: str) -> Access | None:
        """A job's owner and readers if known now; a miss starts a lookup (A3)."""
        live = self._live(job_id)
        if live is not None:
            return live.job.owner, tuple(live.job.readers)
        access = self._known.get(job_id)
        if access is not None:
            self._known.move_to_end(job_id)  # jobs still publishing stay cached
        elif job_id not in self._absent:
            self._look_up(job_id)
        return access

    def remember(self, job: Job) -> None:
        self._set(job.id, (job.owner, tuple(job.readers)))

    def forget(self, job_id: str) -> None:
        self._known.pop(job_id, None)

    async def announce(self, job: Job) -> None:
        """Tell every instance who may read ``job`` (A1); raises Unavailable."""
        if not self.shared:
            return
        await self.hub.publish_many([announcement(job)])

    async def change_readers(
        self, job_id: str, *, add: str | None = None, remove: str | None = None, limit: int
    ) -> Job:
        """Grant or withdraw one subject's read access to a job, live or finished (A5)."""
        async with self._changing:  # this process applies changes in the store's order
            readers = await self.store.change_readers(job_id, add=add, remove=remove, limit=limit)
            if readers is None:
                raise NotFound(f"no job {job_id!r}")
            live = self._set_live_readers(job_id, readers)
            job = live.published.copy() if live is not None else await self.store.get(job_id)
            if job is None:  # deleted in between
                raise NotFound(f"no job {job_id!r}")
        self.remember(job)
        self.hub.forget_access()  # open wildcard streams must see the new grant at once
        await self.announce(job)  # and those on other instances (a 503 here: retry)
        if add is not None:  # A6: the new reader's open lists show it now
            try:
                await self.hub.publish_many([shared_event(job)])
            except JobcastError as exc:  # it is shared; they see it at its next change
                logger.warning("job %s: could not tell open lists it was shared: %s", job_id, exc)
        return job

    async def warm(self) -> None:
        """Learn the jobs that are still queued or running (A2)."""
        states = [JobState.QUEUED, JobState.RUNNING]
        for job in await self.store.in_states(states, limit=CACHE_SIZE):
            self.remember(job)

    async def close(self) -> None:
        for task in list(self._lookups.values()):
            task.cancel()
        if self._lookups:
            await asyncio.gather(*self._lookups.values(), return_exceptions=True)

    # -- the hub's observer ----------------------------------------------------------------

    def delivered(self, events: Sequence[Event]) -> None:
        """Apply access changes announced by any instance, before the batch is fanned out."""
        changed = False
        for event in events:
            if event.topic == ACCESS_TOPIC:
                changed = self._apply(event) or changed
        if changed:
            self.hub.forget_access()

    async def replaying(self, events: Sequence[Event]) -> None:
        """Look up the unknown jobs a replay touches before it is filtered (A4)."""
        unknown: dict[str, None] = {}
        for event in events:
            job_id = _job_id(event.topic)
            if job_id is None or job_id in unknown or job_id in self._known:
                continue
            if job_id not in self._absent and self._live(job_id) is None:
                unknown[job_id] = None
                if len(unknown) >= MAX_REPLAY_LOOKUPS:
                    break
        found = False
        for job_id in unknown:
            found = await self._fetch(job_id) or found
        if found:  # live events may have been filtered while we looked
            self.hub.forget_access()

    # -- internals -------------------------------------------------------------------------

    def _apply(self, event: Event) -> bool:
        try:
            data: Any = orjson.loads(event.data_json)
            job_id, owner, readers = data["id"], data["owner"], data["readers"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("ignoring a malformed job access event %s", event.id)
            return False
        if not isinstance(job_id, str) or not isinstance(owner, str):
            return False
        if not isinstance(readers, list) or not all(isinstance(r, str) for r in readers):
            return False
        self._set_live_readers(job_id, readers)  # a job live in this process, if it is one
        self._set(job_id, (owner, tuple(readers)))
        return True

    def _set_live_readers(self, job_id: str, readers: list[str]) -> LiveJob | None:
        live = self._live(job_id)
        if live is not None:
            live.job.readers = list(readers)
            live.published.readers = list(readers)
        return live

    def _set(self, job_id: str, access: Access) -> None:
        self._absent.pop(job_id, None)
        self._known[job_id] = access
        self._known.move_to_end(job_id)
        if len(self._known) > CACHE_SIZE:
            self._known.popitem(last=False)

    def _look_up(self, job_id: str) -> None:
        if job_id in self._lookups or len(self._lookups) >= LOOKUPS_IN_FLIGHT:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._resolve(job_id))
        except RuntimeError:  # asked outside the event loop: nothing to schedule on
            return
        self._lookups[job_id] = task
        task.add_done_callback(lambda _: self._lookups.pop(job_id, None))

    async def _resolve(self, job_id: str) -> None:
        if await self._fetch(job_id):
            self.hub.forget_access()

    async def _fetch(self, job_id: str) -> bool:
        """Load a job's access from the store; ``True`` if it is a job."""
        try:
            job = await self.store.get(job_id)
        except JobcastError as exc:  # the store is down: the job stays unknown (denied)
            logger.warning("cannot look up who may read job %s: %s", job_id, exc)
            return False
        if job is None:
            self._absent[job_id] = None
            if len(self._absent) > CACHE_SIZE:
                self._absent.popitem(last=False)
            return False
        self.remember(job)
        return True


def _job_id(topic: str) -> str | None:
    """The job a topic under ``jobs/`` belongs to (as the policy's filter reads it)."""
    if not topic.startswith(JOB_TOPIC_PREFIX):
        return None
    return topic[len(JOB_TOPIC_PREFIX) :].partition("/")[0]


def announcement(job: Job) -> EventDraft:
    """The control event that tells every instance who may read ``job`` (A1)."""
    data = {"id": job.id, "owner": job.owner, "readers": list(job.readers)}
    # EventDraft's constructor, not create(): the control topic is deliberately not a valid
    # client topic.
    return EventDraft(ACCESS_TOPIC, "access", dumps(data))


#: The sub-topic and event type of a job's snapshot after a grant (A6).
SHARED = "shared"


def shared_event(job: Job) -> EventDraft:
    """The job whole, for the open lists of a subject it was just shared with (A6)."""
    return EventDraft(f"{JOB_TOPIC_PREFIX}{job.id}/{SHARED}", SHARED, dumps(job.to_dict()))
