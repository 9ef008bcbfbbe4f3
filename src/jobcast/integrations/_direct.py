"""The reporter's direct path: the shared Redis broker and the job store, from the worker.

The jobs are applied here, in the worker's process (``jobs/reported.py``). With the broker's
Redis at hand, the process also shares its metrics there (``shared_metrics.py``), so any
server's ``/metrics`` shows what its reports cost (``_metrics.py``), and writes its tasks'
output streams there (``_direct_streams.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobcast.brokers.redis import RedisBroker
from jobcast.config import Settings
from jobcast.errors import JobcastError
from jobcast.hub import Hub
from jobcast.integrations._direct_streams import StoreSink, open_worker_streams
from jobcast.integrations._metrics import shared_metrics
from jobcast.integrations._stream_writer import ProducerStreams
from jobcast.jobs.access import JobAccess
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.reported import ReportedJobs
from jobcast.stores import open_store

if TYPE_CHECKING:
    from jobcast.integrations._reporter import Reporter
    from jobcast.integrations._streams import JobStreams
    from jobcast.jobs.metadata import MetadataBuffer
    from jobcast.shared_metrics import SharedMetrics

logger = logging.getLogger("jobcast.integrations")


def preload(store_url: str) -> None:
    """Load the store's modules now (a worker's main process, before its pool forks)."""
    open_store(Settings(store_url=store_url).resolved_store_url)


class DirectBackend:
    """Connections, the jobs (``ReportedJobs``), the heartbeat and the sweep (``_reporter.P5``)."""

    def __init__(self, reporter: Reporter, broker_url: str, store_url: str) -> None:
        self.reporter = reporter
        self.settings = Settings(broker_url=broker_url, store_url=store_url)
        self.jobs: ReportedJobs | None = None
        self._broker: RedisBroker | None = None
        self._metrics: SharedMetrics | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sweeping = False
        self._opening = asyncio.Lock()
        limit = self.settings.max_stream_bytes
        self._sink = StoreSink(open_worker_streams(self.settings.resolved_broker_url, limit))
        #: The tasks' output streams, in the broker's Redis (``_direct_streams.py``).
        self.streams = ProducerStreams(self._sink, limit, reporter.exit_wait, reporter.counts)

    async def open(self) -> None:
        self.streams.attach(asyncio.get_running_loop())
        async with self._opening:  # one opening, however many reports wait for it
            if self.jobs is None:
                await self._connect()

    async def _connect(self) -> None:
        settings = self.settings
        broker = RedisBroker(settings.resolved_broker_url, settings.retention())
        await broker.connect()  # publish-only, as a jobcast worker's
        store = open_store(settings.resolved_store_url)
        try:
            await store.open()
        except BaseException:
            await broker.close()
            raise
        self._broker = broker
        hub = Hub(broker, settings.hub_options())
        access = JobAccess(store, hub, lambda job_id: None)
        options = settings.runner_options()  # and the tasks' streams (reported.R6)
        self.jobs = ReportedJobs(hub, store, access, options, outputs=self._sink.store)
        self._tasks.append(asyncio.create_task(self._beat_forever()))
        if settings.metrics_snapshot_seconds > 0:
            self._metrics = shared_metrics(self.reporter, settings, lambda: store)
            self._metrics.start()

    def _jobs(self) -> ReportedJobs:
        if self.jobs is None:
            raise RuntimeError("the reporter is not connected")  # open() runs first
        return self.jobs

    async def queued(self, job: Job) -> None:
        await self._jobs().queued(job)  # a message published again finds its job there

    async def started(self, job: Job) -> bool:
        return await self._jobs().started(job)

    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> bool:
        jobs = self.jobs
        return jobs is not None and jobs.progress(job_id, percent, stage, message)

    async def outputs(self, job_id: str) -> JobStreams:
        return self.streams.of(job_id)

    def metadata(self, job_id: str, update: Callable[[MetadataBuffer], None]) -> bool:
        jobs = self.jobs
        return jobs is not None and jobs.metadata(job_id, update)

    async def retrying(
        self, job_id: str, error: dict[str, str], retry_at: float | None = None
    ) -> None:
        await self.streams.retrying(job_id)  # stored before the next attempt appends
        await self._jobs().retrying(job_id, error, retry_at)

    async def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        await self.streams.end(job_id)  # closed before the terminal event (_stream_writer.T5)
        await self._jobs().finished(job_id, state, **fields)

    async def sweep(self) -> int:
        return await self._jobs().sweep(self.reporter.runs_on, self.reporter.heartbeat)

    async def start_sweeping(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            self._tasks.append(asyncio.create_task(self._sweep_forever()))

    def progress_counts(self) -> dict[str, int]:
        counts = dict(self.jobs.counts) if self.jobs is not None else {}
        # Lost at the broker: not delivered, as a report dropped before it left (P3).
        counts["dropped"] = counts.pop("unpublished", 0)
        return counts

    async def _sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep()
            except JobcastError as exc:
                logger.warning("jobcast: sweep failed: %s", exc)
            else:
                if swept:
                    logger.warning(
                        "jobcast: %d job(s) of dead workers failed as Interrupted", swept
                    )
            await asyncio.sleep(self.reporter.heartbeat)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reporter.heartbeat / 3)
            await self._jobs().beat()

    async def close(self) -> None:
        await self.streams.close()
        jobs = self.jobs
        if jobs is not None:
            await jobs.close(self.reporter.exit_wait)  # endings close streams (reported.R6)
        await self._sink.close()
        for task in self._tasks:
            task.cancel()
        if self._metrics is not None:
            await self._metrics.close()
        if jobs is not None:
            if jobs.access is not None:
                await jobs.access.close()
            await jobs.store.close()
        if self._broker is not None:
            await self._broker.close()
