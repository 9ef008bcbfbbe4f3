"""One task per hub that publishes and stores every live job's coalesced reports.

A live job (``live.py``) only records its reports (progress, metadata, custom events); this
flusher turns them into events and store writes for all the jobs of its hub at once.

Decisions (cited in the code as F1..F7):

F1. One flusher per hub (so one per runner or worker process), made on first use
    (``Flusher.of``) and held by the hub; its task runs while a job has its pump started and
    ends with the last ``leave``, so nothing has to create or close it. One pump task per job
    cost a task, a wake-up, a sleep, a broker commit and a store write per job and interval:
    about 140 us per event, a full core at 7,000 events a second.
F2. A pass takes every job that is due (its ``progress_interval`` over since its last
    coalesced event), builds their drafts under each job's lock, and publishes all of them in
    ONE ``publish_many`` (one broker commit; the broker and the hub keep their order, so each
    job's events stay in its own order). The locks are held until the events are recorded, so
    no state change of a job overtakes its coalesced events (live.L3). A job whose lock is
    held or awaited by its own methods (a state change under way) is left out, never waited
    for; it is handed back to the flusher when its lock is released.
F3. Passes are at least the shortest ``progress_interval`` of the armed jobs apart, and every
    job published in a pass is stamped with the pass's start (its ``updated_at`` too: one
    time of day, written once for the pass's events): jobs that report continuously
    stay in step and leave together, so a process publishes about once per interval whatever
    its number of jobs. A job that reports after the flusher was idle for an interval is
    published at once; otherwise it joins the next pass, at most one interval later.
F4. Store writes: a job published in a pass is stored when its ``store_interval`` is over,
    otherwise it waits, and is stored by a later pass once the interval is over even if
    nothing follows (live.L2). The due writes of a pass are handed to the store together (the
    SQL store's group commit makes them a transaction or two, sql.Q5), stamped with the pass's
    start so they stay in step too. The batch runs beside the next passes (a thousand rows
    take longer than a pass), holding its jobs' locks, so a job's writes stay in order and no
    state change's write is overtaken; a pass may still publish for those jobs (the flusher
    holds their locks), and keeps a lock the batch ends with until its events are recorded.
    One batch at a time: writes that fall due meanwhile go in the next.
F5. When the publish fails (the broker is unavailable), every job of the pass drops its
    drafts, counts its lost progress report and goes on, as a job's own pump did: the next
    report is tried again. A failed store write is logged; the next flush writes again.
F6. ``leave`` (``LiveJob.stop_pump``) returns once the job is out of the flusher and no pass
    holds it any more: what follows (a state change, ``store_now``) sees no flush of the
    pump under way and starts none.
F7. A pass gives the loop back every ``SLICE`` of work, while it takes its jobs' drafts and
    while it records their events: a pass of 1,000 jobs held it 20-85 ms at a time, a stall
    for every other task of the process (the handlers' own updates, streams, requests). The
    jobs taken stay locked until their events are recorded (F2); a job that left meanwhile
    is not taken nor noted unsaved (F6); a job of the store batch is taken under its own lock
    if the batch ended meanwhile (the batch released it, F4).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self

from jobcast.errors import JobcastError
from jobcast.events import Event, EventDraft

if TYPE_CHECKING:
    from jobcast.hub import Hub

logger = logging.getLogger("jobcast.jobs")

#: The longest a pass holds the loop at a time (F7).
SLICE = 0.004


class Flushable(Protocol):
    """The side of a live job the flusher works with (``live.LiveJob``)."""

    hub: Hub
    lock: asyncio.Lock
    progress_interval: float

    def busy(self) -> bool:
        """Whether its own methods hold or await its lock."""

    def publish_at(self) -> float:
        """When (``time.monotonic``) its next coalesced event may go out."""

    def save_at(self) -> float | None:
        """When its unstored flush must be stored; ``None`` when the store holds it."""

    def take_drafts(self, now: float, wall: float | None = None) -> list[EventDraft]:
        """Its pending reports as drafts (its lock held), stamped ``now`` (and ``wall``, the
        time of day, for the events' ``updated_at``)."""

    def drafts_published(self, events: list[Event]) -> None: ...

    def drafts_lost(self) -> None: ...

    def save_due(self, now: float) -> bool:
        """Whether a write now respects its ``store_interval``; otherwise it is left unstored."""

    def leave_unsaved(self) -> None:
        """Its flush is not stored now: store it when its interval is over."""

    async def save_all(self, jobs: list[Self], now: float) -> list[BaseException]:
        """Store ``jobs`` (this one among them) together; the failures, to log (F4, F5)."""


@dataclass(slots=True)
class FlusherStats:
    """Counters since the flusher started."""

    passes: int = 0
    publishes: int = 0
    saves: int = 0


@dataclass(eq=False, slots=True)
class _Pass:
    jobs: set[Flushable] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Locks a store batch ended with while this pass published for their jobs: released by
    #: the pass, once their events are recorded (F2).
    inherited: list[Flushable] = field(default_factory=list)


class Flusher:
    """Publishes and stores the coalesced reports of a hub's live jobs (F1-F6)."""

    @classmethod
    def of(cls, hub: Hub) -> Flusher:
        """The hub's flusher (F1)."""
        flusher = hub.job_flusher
        if not isinstance(flusher, Flusher):
            flusher = hub.job_flusher = cls()
        return flusher

    def __init__(self) -> None:
        self.stats = FlusherStats()
        self._jobs: set[Flushable] = set()
        #: Jobs with reports waiting, in arrival order.
        self._armed: dict[Flushable, None] = {}
        #: Jobs published but not stored yet (F4).
        self._unsaved: set[Flushable] = set()
        self._wake = asyncio.Event()
        #: When the task's sleep ends; -inf while it is not sleeping (a pass runs).
        self._wake_at = -math.inf
        self._last_pass = -math.inf
        self._pass: _Pass | None = None
        #: The store batch under way: its jobs' locks are the flusher's (F4).
        self._storing: _Pass | None = None
        self._task: asyncio.Task[None] | None = None
        self._store_task: asyncio.Task[None] | None = None

    # -- the jobs' side ---------------------------------------------------------------------

    def join(self, job: Flushable) -> None:
        self._jobs.add(job)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-flusher")

    async def leave(self, job: Flushable) -> None:  # F6
        self._jobs.discard(job)
        self._armed.pop(job, None)
        self._unsaved.discard(job)
        for batch in (self._pass, self._storing):
            if batch is not None and job in batch.jobs:
                await batch.done.wait()
        if not self._jobs:
            self._wake.set()  # the task ends

    def arm(self, job: Flushable) -> None:
        """``job`` has reports waiting (called on the loop's thread)."""
        if job not in self._jobs:
            return
        self._armed[job] = None
        if job.publish_at() < self._wake_at:
            self._wake.set()

    def unsaved(self, job: Flushable) -> None:
        """``job`` was published and not stored: store it when its interval is over (F4)."""
        if job not in self._jobs:
            return
        self._unsaved.add(job)
        save_at = job.save_at()
        if save_at is not None and save_at < self._wake_at:
            self._wake.set()

    # -- the task ---------------------------------------------------------------------------

    def _next_pass(self) -> float:
        at = math.inf
        if self._armed:
            due = min(job.publish_at() for job in self._armed)
            gap = min(job.progress_interval for job in self._armed)
            at = max(due, self._last_pass + gap)  # F3
        if self._storing is None:  # the running store batch wakes the task when it is done
            for job in self._unsaved:
                save_at = job.save_at()
                if save_at is not None:
                    at = min(at, save_at)
        return at

    async def _run(self) -> None:
        while self._jobs:
            now = time.monotonic()
            at = self._next_pass()
            if at > now:
                self._wake.clear()
                self._wake_at = at
                try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(None if math.isinf(at) else at - now):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                finally:
                    self._wake_at = -math.inf
                continue
            try:
                await self._run_pass(now)
            except Exception:  # one job's fault must not stop every job's reports
                logger.exception("job flusher: a pass failed")

    async def _run_pass(self, now: float) -> None:
        current = self._pass = _Pass()
        storing = self._storing
        owned: list[Flushable] = []  # locks this pass took (handed to its store batch, F4)
        saves: list[Flushable] = []
        batch: set[Flushable] = set()
        try:
            published: list[tuple[Flushable, int]] = []
            drafts: list[EventDraft] = []
            armed, self._armed = self._armed, {}
            wall = time.time()  # F3: one time of day for every job of the pass
            give_back = time.perf_counter() + SLICE  # F7
            for job in armed:
                if job.publish_at() > now:
                    self._armed[job] = None
                    continue
                if time.perf_counter() > give_back:  # F7
                    await asyncio.sleep(0)
                    give_back = time.perf_counter() + SLICE
                    if job not in self._jobs:  # it left meanwhile (F6)
                        continue
                    storing = self._storing  # the batch may be over: its locks released
                if storing is not None and job in storing.jobs:
                    pass  # its lock is the flusher's own, held for its store write
                elif job.busy():  # F2: armed again when its lock is released
                    continue
                else:
                    await job.lock.acquire()  # free: returns without yielding
                    owned.append(job)
                current.jobs.add(job)
                self._armed.pop(job, None)  # armed again meanwhile (F7): taken now
                taken = job.take_drafts(now, wall)
                if taken:
                    drafts.extend(taken)
                    published.append((job, len(taken)))
            if drafts:
                self._last_pass = now
                self.stats.publishes += 1
                try:
                    events = await published[0][0].hub.publish_many(drafts)  # F2
                except JobcastError as exc:  # F5
                    logger.warning("could not publish progress of %d jobs: %s", len(published), exc)
                    for job, _ in published:
                        job.drafts_lost()
                else:
                    end = 0
                    give_back = time.perf_counter() + SLICE
                    for job, count in published:
                        if time.perf_counter() > give_back:  # F7
                            await asyncio.sleep(0)
                            give_back = time.perf_counter() + SLICE
                        end += count
                        job.drafts_published(events[end - count : end])
                        if storing is None and job.save_due(now):
                            saves.append(job)
                        else:
                            job.leave_unsaved()
                            if job in self._jobs:  # not one that left meanwhile (F6)
                                self._unsaved.add(job)
            if storing is None:
                for job in list(self._unsaved):  # F4
                    if job in current.jobs:
                        continue
                    save_at = job.save_at()
                    if save_at is None or (save_at <= now and job.busy()):
                        self._unsaved.discard(job)  # stored, or noted again when its lock is free
                    elif save_at <= now:
                        await job.lock.acquire()
                        owned.append(job)
                        saves.append(job)
            for job in saves:
                self._unsaved.discard(job)
            batch = set(saves)
        finally:
            if not batch:  # no store batch follows (none due, or the pass failed)
                saves = []
            for job in owned:
                if job not in batch:
                    job.lock.release()
            for job in current.inherited:
                job.lock.release()
            self.stats.passes += 1
            self._pass = None
            current.done.set()
        if saves:
            self._storing = _Pass(jobs=batch)
            self._store_task = asyncio.create_task(
                self._store(saves, now, self._storing), name="job-flusher-store"
            )

    async def _store(self, saves: list[Flushable], now: float, batch: _Pass) -> None:
        """Store a pass's due jobs together (F4), their locks held, while passes go on."""
        self.stats.saves += len(saves)
        try:
            for failure in await saves[0].save_all(saves, now):  # F4
                if isinstance(failure, JobcastError):
                    logger.warning("could not store a job's reports: %s", failure)
                else:
                    logger.error("could not store a job's reports", exc_info=failure)
        finally:
            self._storing = None
            running = self._pass
            for job in saves:
                if running is not None and job in running.jobs:
                    running.inherited.append(job)  # its events are on their way (F2)
                else:
                    job.lock.release()
                if job in self._jobs and job.save_at() is not None:
                    self._unsaved.add(job)
            batch.done.set()
            self._wake.set()
