"""The reporter's HTTP path: reports posted to jobcast's API with a service token.

For workers that cannot reach the broker and the job store: the server applies each report
with the same ``jobs/reported.py`` the direct path uses (``server/routes/job_reports.py``).

Decisions (cited as H1..H6):

H1. Progress is coalesced here first: the latest report of each running job waits for the
    next flush, at most one ``POST /api/job-reports`` per ``flush_interval`` for all of this
    process's jobs; the server coalesces again (live.L2). Reports replaced before a flush are
    counted ``coalesced``; a flush the server does not take is dropped and counted (P3).
H2. Every third of ``heartbeat`` the running jobs are sent a ``beat`` in one request, so the
    server's sweep leaves them alone; a job whose ``running`` report never arrived (the
    server was down when the task started) is sent ``running`` again instead.
H3. A terminal report carries the job when its start was never acknowledged, so the server
    can create it late (``jobs/reported.R2``); it is posted again with backoff until the
    server takes it (a 4xx answer, which a retry would not change, is logged and given up).
H4. Each post carries ``dropped``: progress reports dropped here since the last post the
    server took, so the server's ``/metrics`` counts them (``_metrics.py``).
H5. The server's answer for a ``running`` report is ``terminal`` when the job ended before
    its task started (cancelled while queued): the worker skips the task (P4).
H6. A task's output streams are appended to ``/v1/stream/jobs/{id}/{name}`` by idempotent
    producers (``_http_streams.py``, ``_stream_writer.py``), closed before the terminal
    report is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from jobcast.config import Settings
from jobcast.errors import InvalidInput, JobcastError, Unavailable
from jobcast.integrations._http_streams import HttpSink
from jobcast.integrations._stream_writer import ProducerStreams
from jobcast.jobs.model import Job, JobState

if TYPE_CHECKING:
    from jobcast.integrations._reporter import Reporter
    from jobcast.integrations._streams import JobStreams
    from jobcast.jobs.metadata import MetadataBuffer

logger = logging.getLogger("jobcast.integrations")

PATH = "/api/job-reports"
#: Seconds between two progress flushes of this process (H1).
FLUSH_INTERVAL = 0.1
RETRY_FIRST, RETRY_MAX = 0.1, 5.0


def job_fields(job: Job) -> dict[str, Any]:
    """What a worker knows of a job: enough for the server to create it."""
    return {
        "id": job.id,
        "kind": job.kind,
        "owner": job.owner,
        "params": job.params,
        "runs_on": job.runs_on,
    }


class HttpBackend:
    """Posts reports to ``url`` with ``token`` (H1-H5)."""

    def __init__(
        self, reporter: Reporter, url: str, token: str, flush_interval: float = FLUSH_INTERVAL
    ) -> None:
        self.reporter = reporter
        self.url = url.rstrip("/")
        self.token = token
        self.flush_interval = flush_interval
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._mutex = threading.Lock()  # the hooks' threads and the loop share what follows
        self._running: dict[str, Job] = {}
        self._unacked: set[str] = set()  # H2, H3
        self._pending: dict[str, dict[str, Any]] = {}
        self._armed = False
        self._counts = {"coalesced": 0, "dropped": 0}
        self._forwarded = 0  # H4
        self._failing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._endings: set[asyncio.Task[None]] = set()
        self._sweeping = False
        #: The tasks' output streams, appended to ``/v1/stream`` (``_http_streams.py``).
        self.streams = ProducerStreams(
            HttpSink(self.url, self._http),
            Settings().max_stream_bytes,  # the servers' JOBCAST_MAX_STREAM_BYTES (T4)
            reporter.exit_wait,
            reporter.counts,
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the reporter is not connected")  # open() runs first
        return self._client

    async def open(self) -> None:
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            self.streams.attach(self._loop)
            self._client = httpx.AsyncClient(
                headers={
                    "authorization": f"Bearer {self.token}",
                    "content-type": "application/json",
                },
                timeout=self.reporter.wait,
            )
            self._tasks.append(asyncio.create_task(self._flush_forever()))
            self._tasks.append(asyncio.create_task(self._beat_forever()))

    # -- posting -------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """The server's JSON answer; ``Unavailable`` when a retry may help, ``InvalidInput``
        when it would not (a 4xx answer)."""
        assert self._client is not None  # open() runs first
        # Claimed before the await, so two posts at once never tell the same drops (H4).
        dropped = self._dropped_total() - self._forwarded
        self._forwarded += dropped
        try:
            response = await self._client.post(
                self.url + path, content=orjson.dumps({**body, "dropped": dropped})
            )
        except httpx.HTTPError as exc:
            self._forwarded -= dropped
            raise Unavailable(f"jobcast at {self.url} cannot be reached: {exc!r}") from exc
        if response.status_code >= 400:
            self._forwarded -= dropped
            if response.status_code >= 500 or response.status_code == 429:
                raise Unavailable(f"jobcast answered {response.status_code}: {response.text[:200]}")
            raise InvalidInput(f"jobcast refused: {response.status_code} {response.text[:500]}")
        return response.json()

    async def _report(self, reports: list[dict[str, Any]]) -> list[str]:
        answer = await self._post(PATH, {"reports": reports})
        return list(answer["results"])

    def _dropped_total(self) -> int:
        return self._counts["dropped"] + self.reporter.counts["progress_dropped"]

    # -- the reports ---------------------------------------------------------------------

    async def queued(self, job: Job) -> None:
        await self._report([{"type": "queued", "job": job_fields(job)}])

    async def started(self, job: Job) -> bool:
        with self._mutex:
            self._running[job.id] = job
            self._unacked.add(job.id)
        try:
            (result,) = await self._report([{"type": "running", "job": job_fields(job)}])
        except Unavailable as exc:  # H2: sent again at the next beat
            logger.warning("job %s: running not reported yet: %s", job.id, exc)
            return True
        except InvalidInput as exc:  # a retry would not change it: the task runs untracked
            logger.error("job %s: jobcast refused it: %s", job.id, exc)
            self._forget(job.id)
            return True
        with self._mutex:
            self._unacked.discard(job.id)
            if result == "terminal":  # H5
                self._running.pop(job.id, None)
        return result != "terminal"

    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> bool:
        with self._mutex:  # H1
            if job_id not in self._running:
                return False
            if job_id in self._pending:
                self._counts["coalesced"] += 1
            self._pending[job_id] = {"progress": percent, "stage": stage, "message": message}
            if self._armed:
                return True
            self._armed = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process ends
                self._loop.call_soon_threadsafe(self._wake.set)
        return True

    async def outputs(self, job_id: str) -> JobStreams:
        return self.streams.of(job_id)

    def metadata(self, job_id: str, update: Callable[[MetadataBuffer], None]) -> bool:
        """Metadata is not carried over the HTTP API yet: dropped and counted (P3)."""
        return False

    def _forget(self, job_id: str) -> tuple[dict[str, Any] | None, Job | None]:
        """Stop holding a job: its progress not flushed yet, and the job if never acked."""
        with self._mutex:
            job = self._running.pop(job_id, None)
            unacked = job_id in self._unacked
            self._unacked.discard(job_id)
            return self._pending.pop(job_id, None), job if unacked else None

    async def retrying(
        self, job_id: str, error: dict[str, str], retry_at: float | None = None
    ) -> None:
        self._forget(job_id)  # progress restarts with the next attempt
        await self.streams.retrying(job_id)  # stored before the next attempt appends
        report = {"type": "retrying", "id": job_id, "error": error, "retry_at": retry_at}
        await self._report([report])

    async def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        pending, unacked = self._forget(job_id)
        reports = [{"type": "progress", "id": job_id, **pending}] if pending else []
        ending: dict[str, Any] = {"type": state.value, "id": job_id, **fields}
        if unacked is not None:  # H3
            ending["job"] = job_fields(unacked)
        reports.append(ending)
        task = asyncio.create_task(self._end(job_id, reports))
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)
        await asyncio.shield(task)

    async def _end(self, job_id: str, reports: list[dict[str, Any]]) -> None:
        # The streams are closed before the terminal report (_stream_writer.T5).
        await self.streams.end(job_id)
        await self._until_taken(reports)

    async def _until_taken(self, reports: list[dict[str, Any]]) -> None:  # H3
        delay = RETRY_FIRST
        while True:
            try:
                await self._report(reports)
                return
            except Unavailable as exc:
                logger.warning(
                    "jobcast: terminal report not taken (retrying in %g s): %s", delay, exc
                )
            except InvalidInput as exc:
                logger.error("jobcast: terminal report refused: %s", exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def sweep(self) -> int:
        body = {"runs_on": self.reporter.runs_on, "silent_seconds": self.reporter.heartbeat}
        answer = await self._post(PATH + "/sweep", body)
        return int(answer["swept"])

    async def start_sweeping(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            self._tasks.append(asyncio.create_task(self._sweep_forever()))

    def progress_counts(self) -> dict[str, int]:
        with self._mutex:
            return dict(self._counts)

    # -- the background ------------------------------------------------------------------

    async def _flush_forever(self) -> None:  # H1
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_interval)
            with self._mutex:
                pending, self._pending = self._pending, {}
                self._armed = False
            reports = [{"type": "progress", "id": i, **p} for i, p in pending.items()]
            try:
                await self._report(reports)
            except JobcastError as exc:
                with self._mutex:
                    self._counts["dropped"] += len(reports)
                if not self._failing:  # once per outage, not once per flush
                    logger.warning("jobcast: progress dropped: %s", exc)
                self._failing = True
            else:
                self._failing = False

    async def _beat_forever(self) -> None:  # H2
        while True:
            await asyncio.sleep(self.reporter.heartbeat / 3)
            with self._mutex:
                unacked = [job for job_id, job in self._running.items() if job_id in self._unacked]
                beats = [job_id for job_id in self._running if job_id not in self._unacked]
            reports = [{"type": "running", "job": job_fields(job)} for job in unacked]
            reports += [{"type": "beat", "id": job_id} for job_id in beats]
            if not reports:
                continue
            try:
                await self._report(reports)
            except JobcastError as exc:
                logger.warning("jobcast: heartbeat not reported: %s", exc)
                continue
            with self._mutex:
                self._unacked.difference_update(job.id for job in unacked)

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

    async def close(self) -> None:
        if self._endings:
            await asyncio.wait(list(self._endings), timeout=self.reporter.exit_wait)
        if self._client is not None:
            await self.streams.close()
        for task in self._tasks:
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
