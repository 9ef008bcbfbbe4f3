"""One queued or running job held by this process: its state, events and store writes.

Decisions (cited in the code as L1..L8):

L1. Every change to a job goes through ``_emit`` under one lock: bump ``seq``, publish the
    event, then remember the published copy together with its event id. A stream that starts
    from that pair and resumes the hub after that id sees every later event exactly once
    (``server/streams/job_plan.py``).
L2. Progress reports are coalesced: ``report_progress`` only stores the latest report (from any
    thread) and arms the pump at most once; the pump publishes at most one ``progress`` event
    per ``progress_interval`` (latest wins) and writes the store at most every
    ``store_interval``, and once more when that interval is over if a flush in it was not
    stored (so the store holds the last report, and metadata, within ``store_interval``
    even when nothing follows). A handler may report thousands of times a second at no cost.
L3. Before any state change, pending custom events and progress are flushed, so the terminal
    event is always the last event of a job and its snapshot carries the last progress.
L4. The terminal event is never dropped: if the broker refuses it, it is retried; the store
    write that follows records the terminal state whatever happens to the event.
L5. A terminal state is always stored: while the store refuses it, the write is retried with
    backoff (capped at ``SAVE_RETRY_MAX`` seconds) until it succeeds or the runner shuts down.
    The job stays tracked meanwhile, so reads and streams see the terminal state from memory,
    and a restart never finds it ``running``.
L6. The pump is not a task of the job's own: ``start_pump`` hands the job to its hub's
    flusher (``flusher.py``), which publishes the coalesced reports of every due job in one
    ``publish_many`` per pass and hands their due store writes to the store together. A pass
    holds the lock of each job it flushes until its events are recorded, exactly as the job's
    own methods do, so L1 and L3 hold across the two; a pass leaves out a job whose lock is
    held, and the job hands itself back to the flusher when its lock is released.
L7. The published copy of L1 is made after every flush of every job (1,000 jobs reporting
    continuously: 10,000 copies a second), so it is ``Job.copy`` without
    ``dataclasses.replace``'s per-field lookups and keywords (``published_copy``, the same
    copy: every field, its lists and dicts not shared): 6.9 -> 1.7 us.
L8. The flusher's due store writes (flusher.F4) go to the store in ``save_many`` calls when
    the store's class has one (the SQL store, sql.Q5): a thousand ``save`` calls side by side
    cost the loop a task, a coroutine and a shield each; with the store's rows (sql.Q12),
    43 -> 13 ms of the loop's CPU to store 1,000 jobs. The class's own method, not any
    attribute: a wrapper that forwards other calls to a real store must not have its ``save``
    bypassed. The jobs go in calls of ``SAVE_CHUNK``, side by side, so the loop is given back
    between their rows (a thousand held it 11-16 ms at a time); they join one or two
    transactions all the same (sql.Q5). A call that fails fails for all its jobs, as their
    shared transaction does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jobcast.errors import InvalidInput, JobcastError, Unavailable
from jobcast.events import Event, EventDraft, dumps, validate_type
from jobcast.jobs import input_wait
from jobcast.jobs.flusher import Flusher
from jobcast.jobs.metadata import MetadataBuffer
from jobcast.jobs.model import JOB_EVENT_TYPES, Job, JobState, iso_time, job_topic

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.jobs")

#: Custom events a handler may have waiting to be published before ``publish`` refuses more.
MAX_OUTBOX = 10_000
#: First and longest wait between attempts to store a terminal state (L5).
SAVE_RETRY_FIRST = 0.1
SAVE_RETRY_MAX = 5.0
#: The most jobs of a flusher pass one ``save_many`` call stores (L8).
SAVE_CHUNK = 250

#: Every field of a job, in ``__init__``'s order (L7).
_job_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Job) if f.init))


#: The newest time ``_iso_stamp`` wrote, and how.
_stamp: tuple[float, str | None] = (-1.0, None)


def _iso_stamp(wall: float) -> str | None:
    """``iso_time(wall)``, written once for all the jobs a flusher pass stamps with one
    time (flusher.F3)."""
    global _stamp
    if _stamp[0] != wall:
        _stamp = (wall, iso_time(wall))
    return _stamp[1]


def published_copy(job: Job) -> Job:
    """``job.copy()``, made the way a flush can afford for every job of a pass (L7)."""
    copy = Job(*_job_fields(job))
    copy.readers = list(job.readers)
    copy.metadata = dict(job.metadata)  # values are replaced, never changed in place
    copy.tags = list(job.tags)
    copy.inputs = dict(job.inputs)
    return copy


class LiveJob:
    """A job's live copy (the lifecycle engine tracks it), and the job's
    :class:`~jobcast.jobs.context.JobSink`."""

    def __init__(
        self,
        job: Job,
        *,
        hub: Hub,
        store: JobStore,
        progress_interval: float,
        store_interval: float,
        max_event_bytes: int,
        on_terminal: Callable[[Job], None] | None = None,
        slots: asyncio.Semaphore | None = None,
        after_terminal: Callable[[Job], Awaitable[None]] | None = None,
        on_saved: Callable[[Job], None] | None = None,
    ) -> None:
        self.job = job
        #: Told after each store write of a job that is not over (its parent's progress,
        #: batches.G8).
        self.on_saved = on_saved
        #: Told once the job reached a terminal state (the job metrics, ``stats.py``).
        self.on_terminal = on_terminal
        #: Awaited once its terminal state is published and stored (its batch, batches.G3).
        self.after_terminal = after_terminal
        self.published = job.copy()
        self.hub = hub
        self.store = store
        self.progress_interval = progress_interval
        self.store_interval = store_interval
        self.max_event_bytes = max_event_bytes
        self.topic = job_topic(job.id)
        #: The runner's slots: a job waiting for input gives its slot back (input_wait.N2);
        #: ``holds_slot`` says whether it holds one now.
        self.slots = slots
        self.holds_slot = True
        #: Whether a wait with no answer parks this run (input_wait.N7), and whether the job
        #: is parked now: no task runs it until its answer or its timeout (N8).
        self.parks = False
        self.parked = False
        #: Set when an input for this job was stored by this process (input_wait.N1).
        self.input_arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Why the job's task was cancelled: "cancel" (a user), "shutdown" or None.
        self.stop_reason: str | None = None
        #: The trace context of its submission, with tracing on (tracing.O3).
        self.trace: dict[str, str] | None = None
        self._cancel = threading.Event()
        #: Held by whatever publishes for the job: its own methods, or a flusher pass (L6).
        self.lock = asyncio.Lock()
        self._lock_users = 0
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._mutex = threading.Lock()
        self._pending: tuple[float, str | None, str | None] | None = None
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._metadata = MetadataBuffer(job.metadata)  # metadata.M2, under _mutex
        self._armed = False
        self._flusher = Flusher.of(hub)  # L6
        self._pumping = False
        self._last_progress = 0.0
        self._last_save = 0.0
        #: Progress reports replaced by a later one before publishing (L2), and reports
        #: lost because the broker refused them: what ``jobs/reported.py`` counts.
        self.progress_coalesced = 0
        self.progress_unpublished = 0
        #: A flush published what the store does not hold yet (L2).
        self._unsaved = False
        #: The last drafts taken carry a progress report (counted if they are lost).
        self._taken_progress = False

    # -- JobSink: called by the handler's context, from any thread ------------------------

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        self._cancel.set()

    def rearm(self) -> None:
        """Accept reports again: the next attempt of a retried job (lifecycle.R4). The flag was
        set when the previous attempt's call ended, so its late reports were refused."""
        if self.stop_reason is None:
            self._cancel.clear()

    def report_progress(self, progress: float, message: str | None, stage: str | None) -> None:
        with self._mutex:  # L2
            if self._pending is not None:
                self.progress_coalesced += 1
            self._pending = (progress, message, stage)
            if self._armed:
                return
            self._armed = True
        self._signal()

    def report_event(self, event_type: str, data: Any) -> None:
        validate_type(event_type)
        if event_type in JOB_EVENT_TYPES:
            raise InvalidInput(f"event type {event_type!r} is reserved for job lifecycle events")
        data_json = dumps(data)
        if len(data_json) > self.max_event_bytes:
            raise InvalidInput(
                f"event data is {len(data_json)} bytes; the limit is {self.max_event_bytes}"
            )
        with self._mutex:
            if len(self._outbox) >= MAX_OUTBOX:
                raise Unavailable("the job publishes events faster than they can be stored")
            self._outbox.append((event_type, data_json))
            if self._armed:
                return
            self._armed = True
        self._signal()

    def change_metadata(self, update: Callable[[MetadataBuffer], None]) -> None:
        """Apply one metadata update (it raises and changes nothing when invalid, metadata.M1);
        the pump publishes the changed keys (metadata.M2)."""
        with self._mutex:
            update(self._metadata)
            if self._armed or not self._metadata.dirty:
                return
            self._armed = True
        self._signal()

    async def wait_for_input(
        self,
        name: str,
        schema: dict[str, Any],
        *,
        prompt: str | None,
        seconds: float,
        default: Any,
        keep_slot: bool = False,
    ) -> Any:
        """Wait for the input ``name`` (``input_wait.py``)."""
        return await input_wait.wait_for_input(
            self,
            name,
            schema,
            prompt=prompt,
            seconds=seconds,
            default=default,
            keep_slot=keep_slot,
        )

    def _signal(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._flusher.arm(self)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the job is over anyway
                self._loop.call_soon_threadsafe(self._flusher.arm, self)

    # -- the pump: the hub's flusher (L2, L6) ------------------------------------------------

    def start_pump(self) -> None:
        """Have the hub's flusher publish and store this job's reports (L6)."""
        self._pumping = True
        self._flusher.join(self)
        self._hand_back()

    async def stop_pump(self) -> None:
        """Take the job out of the flusher; once this returns no flush of it is under way and
        none starts (flusher.F6). Reports stay pending for the next state change (L3)."""
        if self._pumping:
            self._pumping = False
            await self._flusher.leave(self)

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The job's lock; when released, what a flusher pass left out while it was held is
        handed back to the flusher (flusher.F2)."""
        self._lock_users += 1
        try:
            async with self.lock:
                yield
        finally:
            self._lock_users -= 1
            self._hand_back()

    def busy(self) -> bool:
        """Whether the lock is held or awaited (a pass leaves the job out: it never waits)."""
        return self._lock_users > 0 or self.lock.locked()

    def _hand_back(self) -> None:
        if not self._pumping:
            return
        if self._armed:
            self._flusher.arm(self)
        if self._unsaved:
            self._flusher.unsaved(self)

    # -- flusher.Flushable: called by the flusher, on the loop's thread ---------------------

    def publish_at(self) -> float:
        return self._last_progress + self.progress_interval

    def save_at(self) -> float | None:
        return self._last_save + self.store_interval if self._unsaved else None

    def take_drafts(self, now: float, wall: float | None = None) -> list[EventDraft]:
        self._taken_progress = False
        with self._mutex:
            pending, self._pending = self._pending, None
            outbox = self._outbox
            if outbox:
                self._outbox = collections.deque()
            metadata = self._metadata.take()
            self._armed = False
        if not pending and not outbox and metadata is None:
            return []
        job = self.job
        if wall is None:
            wall = time.time()
        drafts = []
        for event_type, data_json in outbox:
            job.seq += 1
            body = b'{"id":"%s","seq":%d,"data":%s}' % (job.id.encode(), job.seq, data_json)
            drafts.append(EventDraft(self.topic, event_type, body))
        if metadata is not None:  # metadata.M2
            delta, removed, job.metadata = metadata
            job.seq += 1
            job.updated_at = wall
            data = {"id": job.id, "seq": job.seq, "metadata": delta, "removed": removed}
            data["updated_at"] = _iso_stamp(wall)
            drafts.append(EventDraft(self.topic, "metadata", dumps(data)))
            self._last_progress = now  # metadata shares progress's rate (M2)
        if pending is not None:
            job.apply_progress(*pending, wall)
            job.seq += 1
            drafts.append(EventDraft(self.topic, "progress", dumps(job.progress_dict())))
            self._last_progress = now
            self._taken_progress = True
        return drafts

    def drafts_published(self, events: list[Event]) -> None:
        self._published(events[-1].id)

    def drafts_lost(self) -> None:
        if self._taken_progress:
            self.progress_unpublished += 1

    def save_due(self, now: float) -> bool:
        if now - self._last_save >= self.store_interval:
            return True
        self._unsaved = True  # stored once the interval is over, even if nothing follows (L2)
        return False

    def leave_unsaved(self) -> None:
        self._unsaved = True

    async def save_all(self, jobs: list[LiveJob], now: float) -> list[BaseException]:
        """Store ``jobs``' flushes (this job's among them) together (flusher.F4, L8); the
        failures, one per job whose write failed (the store says why)."""
        stores: dict[int, list[LiveJob]] = {}
        for job in jobs:
            job._last_save = now
            job._unsaved = False
            stores.setdefault(id(job.store), []).append(job)
        failures: list[BaseException] = []
        for group in stores.values():
            store = group[0].store
            save_many = getattr(type(store), "save_many", None)  # the class's own: L8
            if save_many is None:
                chunks = [[job] for job in group]
                calls = [store.save(job.published) for job in group]
            else:
                chunks = [group[at : at + SAVE_CHUNK] for at in range(0, len(group), SAVE_CHUNK)]
                calls = [save_many(store, [job.published for job in chunk]) for chunk in chunks]
            results = await asyncio.gather(*calls, return_exceptions=True)
            for chunk, result in zip(chunks, results, strict=True):
                if isinstance(result, BaseException):  # one failure to log per call
                    failures.append(result)
                    continue
                for job in chunk:
                    if job.on_saved is not None and not job.published.terminal:
                        job.on_saved(job.published)
        return failures

    async def store_now(self) -> None:
        """Publish pending reports and store the job, whatever the interval (spawn.S4: before
        its row is written in another transaction, no older write of it is left queued)."""
        async with self._locked():
            await self._flush_locked(save=False)
            await self._save()

    async def _flush_locked(self, *, save: bool = True) -> None:
        """Publish this job's pending reports now, on its own (its lock held: L3)."""
        now = time.monotonic()
        drafts = self.take_drafts(now)
        if not drafts:
            return
        try:
            events = await self.hub.publish_many(drafts)
        except JobcastError:
            self.drafts_lost()
            raise
        self.drafts_published(events)
        if save and now - self._last_save >= self.store_interval:
            await self._save()
        else:
            self._unsaved = True  # stored once the interval is over, even if nothing follows

    # -- state changes (L1, L3) -----------------------------------------------------------

    async def transition(
        self,
        state: JobState,
        *,
        message: str | None = None,
        result: Any = None,
        error: dict[str, str] | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Move to ``state``, publishing ``state`` (or the terminal event) with the snapshot.

        ``retry_at`` (with ``QUEUED`` and the failed attempt's ``error``) is a retry: the event
        is ``retrying`` and the snapshot carries ``next_attempt_at`` and ``last_error``."""
        async with self._locked():
            with contextlib.suppress(JobcastError):
                await self._flush_locked()  # L3
            job = self.job
            now = time.time()
            job.state = state
            job.updated_at = now
            if message is not None:
                job.message = message
            job.waiting = None  # no longer waiting for input (input_wait.py), whatever came
            if state is JobState.RUNNING:
                job.started_at = now
                job.attempts += 1
                job.next_attempt_at = None
            elif state is JobState.QUEUED:  # progress restarts with the next attempt
                job.started_at = None
                job.progress = 0.0
                job.stage = None
                job.eta_seconds = None
                if retry_at is not None:
                    job.next_attempt_at = retry_at
                    job.last_error = error
            else:
                job.finished_at = now
                job.next_attempt_at = None
                job.eta_seconds = None if state is not JobState.SUCCEEDED else 0.0
                if state is JobState.SUCCEEDED:
                    job.progress = 100.0
                job.result = result
                job.error = error
                if error is not None:
                    job.last_error = error
                if self.on_terminal is not None:
                    self.on_terminal(job)
            job.seq += 1
            event_type = state.value if job.terminal else "state"
            if retry_at is not None:
                event_type = "retrying"
            draft = EventDraft(self.topic, event_type, dumps(job.to_dict()))
            await self._publish_state(draft, retries=5 if job.terminal else 0)
            if job.terminal:
                await self._save_until_stored()  # L5
                if self.after_terminal is not None:
                    await self.after_terminal(job.copy())
            else:
                await self._save()

    async def change(
        self, event_type: str, mutate: Callable[[Job], None], *, save: bool = True
    ) -> None:
        """Change a running job and publish it whole as ``event_type`` (``waiting``,
        ``resumed``): after pending reports (L3), stored at once, like a state change
        (``save=False``: the caller stores ``published`` in its own transaction, spawn.S4)."""
        async with self._locked():
            with contextlib.suppress(JobcastError):
                await self._flush_locked(save=save)  # L3
            job = self.job
            mutate(job)
            job.updated_at = time.time()
            job.seq += 1
            await self._publish_state(
                EventDraft(self.topic, event_type, dumps(job.to_dict())), retries=2
            )
            if save:
                await self._save()

    async def _publish_state(self, draft: EventDraft, *, retries: int) -> None:
        for attempt in range(retries + 1):
            try:
                (event,) = await self.hub.publish_many([draft])
            except JobcastError as exc:
                if attempt == retries:
                    logger.error("job %s: could not publish %s: %s", self.job.id, draft.type, exc)
                    self.published = self.job.copy()
                    return
                await asyncio.sleep(0.2 * 2**attempt)  # L4: the broker may come back
            else:
                self._published(event.id)
                return

    async def beat(self) -> None:
        """Store the job with a fresh ``updated_at``: a sign of life for a job whose runner
        is another system's worker (``jobcast.integrations``), whose silence means it died."""
        async with self._locked():
            if self.job.terminal:
                return
            now = time.time()
            self.job.updated_at = now
            self.published.updated_at = now
            await self._save()

    def _published(self, event_id: str) -> None:
        self.job.last_event_id = event_id
        self.published = published_copy(self.job)  # L1, L7

    async def _save(self, now: float | None = None) -> None:
        self._last_save = time.monotonic() if now is None else now
        self._unsaved = False
        await self.store.save(self.published)
        if self.on_saved is not None and not self.published.terminal:
            self.on_saved(self.published)

    async def _save_until_stored(self) -> None:  # L5
        delay = SAVE_RETRY_FIRST
        while True:
            try:
                await self._save()
                return
            except JobcastError as exc:
                logger.warning(
                    "job %s: could not store its %s state (retrying in %g s): %s",
                    self.job.id,
                    self.job.state.value,
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, SAVE_RETRY_MAX)
