"""The embedded runner's dispatcher: one task that hands queued jobs to the lifecycle engine,
in the schedule's order (``schedule.py``), within the slots, the per-kind limits and the
per-owner limit (runner.D2, D3)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping

from jobcast.jobs.lifecycle import JobLifecycle
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import JobState
from jobcast.jobs.schedule import JobSchedule


class Dispatcher:
    """Queued jobs by priority and time; ``start`` runs them, ``close`` stops handing them out.

    ``live`` is the runner's map of tracked jobs (runner.D1): a job id the schedule yields is
    run only while its job is still queued there and nothing runs it yet.
    """

    def __init__(self, lifecycle: JobLifecycle, live: Mapping[str, LiveJob]) -> None:
        self.lifecycle = lifecycle
        self._live = live
        self.schedule = JobSchedule()
        self._running: collections.Counter[str] = collections.Counter()  # by kind (D3)
        self._full: set[str] = set()  # kinds at their limit (D3)
        self._owner_limit = lifecycle.options.owner_concurrency
        self._owners: collections.Counter[str] = collections.Counter()  # running, by owner
        self._full_owners: set[str] = set()  # owners at the owner limit (D3, schedule.P6)
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.schedule)

    def push(self, live: LiveJob) -> None:
        """Queue a tracked job at its priority, no earlier than its time (D2, lifecycle.R4)."""
        job = live.job
        self.schedule.push(job.id, job.priority, job.not_before, job.kind, job.owner)
        self._work.set()

    def remove(self, job_id: str) -> None:
        self.schedule.remove(job_id)

    def start(self) -> None:
        self._work.set()
        self._task = asyncio.create_task(self._forever(), name="jobcast-dispatch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:  # D2
        slots, registry = self.lifecycle.slots, self.lifecycle.registry
        while True:
            await slots.acquire()  # given back by the lifecycle when the job ends
            if (job_id := self.schedule.pop(self._full, self._full_owners)) is None:
                # Idle: wait without the slot, so a job that waited for input (input_wait.N2)
                # can take it back to resume.
                slots.release()
                with contextlib.suppress(TimeoutError):  # schedule.P4
                    # asyncio.timeout: wait_for can lose a cancellation on 3.11 (redis.py).
                    async with asyncio.timeout(self.schedule.next_due()):
                        await self._work.wait()
                self._work.clear()
                continue
            live = self._live.get(job_id)
            if (
                live is None
                or live.task is not None
                or not (
                    live.job.state is JobState.QUEUED or live.parked  # input_wait.N8: woken
                )
            ):
                slots.release()  # cancelled while queued
                continue
            kind = live.job.kind
            self._running[kind] += 1  # counted now: the next pop must already see it (D3)
            spec = registry.find(kind)
            limit = spec.concurrency if spec is not None else None
            if limit is not None and self._running[kind] >= limit:
                self._full.add(kind)
            if self._owner_limit is not None:
                owner = live.job.owner
                self._owners[owner] += 1
                if self._owners[owner] >= self._owner_limit:
                    self._full_owners.add(owner)
            live.task = asyncio.create_task(self._run(live), name=f"job-{live.job.id}")

    async def _run(self, live: LiveJob) -> None:
        kind, owner = live.job.kind, live.job.owner
        try:
            await self.lifecycle.run(live)
        finally:
            self._running[kind] -= 1
            if kind in self._full:
                self._full.discard(kind)
                self._work.set()  # its next queued job may start (D3)
            if self._owner_limit is not None:
                self._owners[owner] -= 1
                running = self._owners[owner]
                if not running:
                    del self._owners[owner]  # bounded by the owners running now
                self._full_owners.discard(owner)
                if self.schedule.parked(owner):  # schedule.P6: as many as it has room for
                    self.schedule.unpark(owner, self._owner_limit - running)
                    self._work.set()
