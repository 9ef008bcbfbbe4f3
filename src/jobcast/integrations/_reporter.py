"""One process's reports of its tasks' jobs, to jobcast's broker and store or its HTTP API.

A queue's hooks (Celery signals, ...) run in the sending or working process, in any thread,
and must never fail or slow down the task. They call this :class:`Reporter`, which does the
work on an event loop thread of its own, through one of two paths:

- ``jobcast="redis://..."`` and ``store=...``: the shared broker and job store, directly
  (``_direct.py``), with the jobs applied here (``jobs/reported.py``);
- ``jobcast="https://..."`` and ``token=...`` (a service token): jobcast's HTTP API
  (``_http.py``), for workers that cannot reach the broker and store; the server applies
  the reports with the same ``jobs/reported.py``.

Decisions (cited as P1..P6):

P1. One loop thread per process, started at first use and again after a fork (a prefork
    pool's children inherit the object, not the thread): its connections are its own.
P2. A hook waits for its report at most ``wait`` seconds. Creating the queued job is waited
    for, so the sender's next read finds it; a terminal report that cannot be stored yet goes
    on in the background and the process waits for it, bounded, at exit.
P3. jobcast being down never fails a task: every report catches jobcast's errors, logs a
    warning and counts what it dropped (``counts``, and the metric of ``_metrics.py``). A
    progress report for a job this process could not start is dropped and counted; the
    terminal state is retried until stored.
P4. A job already terminal when its task starts (cancelled while queued) is not reported
    again (``started`` is False: the task is skipped); see ``jobs/reported.R1``.
P5. While a task runs, its job is stored every third of ``heartbeat`` seconds with a fresh
    ``updated_at``. ``sweep`` fails as ``Interrupted`` this queue's jobs left ``running`` and
    silent for longer than ``heartbeat`` (``jobs/reported.R4``): their worker died and
    nothing re-delivers them (a queue without late acknowledgement).
P6. A task's output streams (``stream``) behave as a native job's (``ctx.stream``): written
    by idempotent producers (``_stream_writer.py``) into the broker's Redis on the direct
    path (``_direct_streams.py``) or to ``/v1/stream`` on the HTTP path
    (``_http_streams.py``); closed when the task ends, before its terminal report, and
    flushed (left open) when it will run again. Opening a stream
    waits for the reporter at most ``wait`` seconds; when jobcast cannot be reached it hands
    back a stand-in whose writes are dropped and counted (``output_dropped``, P3).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from jobcast.integrations._streams import DroppedStream, JobStreams, OutputWriter, check_name
from jobcast.jobs.metadata import JobMetadata, MetadataBuffer
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.reported import INTERRUPTED

__all__ = ["EXIT_WAIT", "INTERRUPTED", "Reporter"]

logger = logging.getLogger("jobcast.integrations")

#: Seconds the process waits at exit for terminal reports still being retried (P2).
EXIT_WAIT = 10.0


class Backend(Protocol):
    """A reporting path (``_direct.py``, ``_http.py``), living on the reporter's loop."""

    async def open(self) -> None: ...
    async def queued(self, job: Job) -> None: ...
    async def started(self, job: Job) -> bool: ...
    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> bool:
        """From any thread; False when the report cannot be taken (dropped, P3)."""
        ...

    async def retrying(
        self, job_id: str, error: dict[str, str], retry_at: float | None = None
    ) -> None: ...
    async def finished(self, job_id: str, state: JobState, **fields: Any) -> None: ...
    async def sweep(self) -> int: ...
    async def start_sweeping(self) -> None: ...
    def metadata(self, job_id: str, update: Callable[[MetadataBuffer], None]) -> bool:
        """From any thread; False when the update cannot be taken (dropped, P3)."""
        ...

    def progress_counts(self) -> dict[str, int]: ...
    async def outputs(self, job_id: str) -> JobStreams:
        """The job's output streams in this process (P6)."""
        ...

    async def close(self) -> None: ...


class Reporter:
    """Reports the jobs of one queue (``runs_on``) from this process; thread-safe (P1)."""

    def __init__(
        self,
        runs_on: str,
        *,
        jobcast: str,
        store: str | None = None,
        token: str | None = None,
        heartbeat: float = 10.0,
        wait: float = 5.0,
    ) -> None:
        self.runs_on = runs_on
        self.heartbeat = heartbeat
        self.wait = wait
        self.exit_wait = EXIT_WAIT
        self._make: Callable[[Reporter], Backend]
        if jobcast.startswith(("http://", "https://")):
            if not token:
                raise ValueError("reporting over HTTP needs a service token (token=...)")
            from jobcast.integrations._http import HttpBackend

            self._make = lambda reporter: HttpBackend(reporter, jobcast, token)
        else:
            if not store:
                raise ValueError(f"reporting to {jobcast!r} needs the job store (store=...)")
            from jobcast.integrations._direct import DirectBackend, preload

            # The store's modules load in the worker's main process, before its pool forks,
            # so no child pays for them at its first task.
            preload(store)
            self._make = lambda reporter: DirectBackend(reporter, jobcast, store)
        #: What jobcast being down cost (P3): progress dropped, reports that failed.
        self.counts: collections.Counter[str] = collections.Counter()
        self._pid = -1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._backend: Backend | None = None
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a forked child: the parent's lock may have been held, its thread is not here."""
        self._lock = threading.Lock()
        self._pid, self._loop, self._backend, self._thread = -1, None, None, None
        self.counts = collections.Counter()

    def progress_counts(self) -> dict[str, int]:
        """Progress reports coalesced away and dropped in this process (``_metrics.py``)."""
        backend = self._backend if self._pid == os.getpid() else None
        counts = collections.Counter(backend.progress_counts() if backend is not None else {})
        counts["dropped"] += self.counts["progress_dropped"]
        return dict(counts)

    # -- the hooks' side: blocking at most ``wait`` (P2), never raising (P3) ----------------

    def warm(self) -> None:
        """Connect now, in the background: a pool child right after it forked (P1)."""
        with contextlib.suppress(Exception):
            loop, backend = self._started()
            asyncio.run_coroutine_threadsafe(_guarded(backend, _nothing), loop)

    def queued(self, job: Job) -> None:
        self._call("queued", lambda b: b.queued(job))

    def started(self, job: Job) -> bool:
        """``job`` as the worker knows it; the stored one wins when there is one (P4).
        False when the job ended before it started (cancelled while queued): skip the task."""
        return self._call("started", lambda b: b.started(job)) is not False

    def progress(self, job_id: str, percent: float, stage: str | None, message: str | None) -> None:
        """Cheap: hands the report to the job's coalescing; never waits."""
        backend = self._backend if self._pid == os.getpid() else None
        if backend is not None and backend.progress(job_id, percent, stage, message):
            return
        self.counts["progress_dropped"] += 1  # P3
        if self.counts["progress_dropped"] == 1:
            logger.warning("job %s: progress dropped: jobcast could not start it", job_id)

    def metadata(self, job_id: str) -> JobMetadata:
        """The running task's metadata (``ctx.metadata``'s twin): coalesced like progress;
        updates of a task this process holds no running job for are dropped, as its
        progress is (P3)."""

        def change(update: Callable[[MetadataBuffer], None]) -> None:
            backend = self._backend if self._pid == os.getpid() else None
            if backend is None or not backend.metadata(job_id, update):  # P3
                self.counts["metadata_dropped"] += 1

        return JobMetadata(change)

    def stream(self, job_id: str, name: str, content_type: str) -> OutputWriter:
        """The task's output stream ``name`` (opened on first use), ``ctx.stream``'s twin:
        ``write`` never waits, the stream closes when the task ends (P6). A bad name, or a
        name already open with another content type, raises ``InvalidInput``."""
        check_name(name)
        streams: JobStreams | None = self._call("stream", lambda b: b.outputs(job_id))
        if streams is None:  # P3
            return DroppedStream(self.counts, job_id, name, content_type)
        return streams.open(name, content_type)

    def retrying(self, job_id: str, error: dict[str, str], retry_at: float | None = None) -> None:
        """The task failed and will run again (at ``retry_at``, epoch seconds, if known)."""
        self._call("retrying", lambda b: b.retrying(job_id, error, retry_at))

    def finished(self, job_id: str, state: JobState, **fields: Any) -> None:
        self._call("finished", lambda b: b.finished(job_id, state, **fields))

    def sweep(self) -> int:
        """Fail this queue's silent ``running`` jobs as ``Interrupted`` (P5); how many."""
        swept: int | None = self._call("sweep", lambda b: b.sweep())
        return swept or 0

    def sweep_every_heartbeat(self) -> None:
        """Sweep now and then once a heartbeat, from this process (a worker's main one)."""
        self._call("sweep", lambda b: b.start_sweeping())

    def close(self) -> None:
        """Wait (bounded) for reports still being retried, then close the connections."""
        if self._pid != os.getpid() or self._loop is None or self._backend is None:
            return
        backend, loop, thread = self._backend, self._loop, self._thread
        self._backend = self._loop = self._thread = None
        self._pid = -1
        with contextlib.suppress(Exception):
            future = asyncio.run_coroutine_threadsafe(backend.close(), loop)
            future.result(self.exit_wait + 5)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        if not loop.is_running():  # its connections are closed: the loop's own resources too
            loop.close()

    # -- internals -------------------------------------------------------------------------

    def _call(self, what: str, work: Callable[[Backend], Coroutine[Any, Any, Any]]) -> Any:
        try:
            loop, backend = self._started()
            future = asyncio.run_coroutine_threadsafe(_guarded(backend, work), loop)
            return future.result(self.wait)
        except (concurrent.futures.TimeoutError, TimeoutError):
            logger.warning("jobcast: %s report still pending after %g s", what, self.wait)
        except Exception as exc:  # P3: whatever jobcast's trouble, the task goes on
            self.counts[f"{what}_failed"] += 1
            logger.warning("jobcast: %s report failed: %s", what, exc)
        return None

    def _started(self) -> tuple[asyncio.AbstractEventLoop, Backend]:  # P1
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._backend is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="jobcast-reporter", daemon=True
                )
                thread.start()
                self._backend = self._make(self)
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                atexit.register(self.close)
            return self._loop, self._backend


async def _guarded(backend: Backend, work: Callable[[Backend], Coroutine[Any, Any, Any]]) -> Any:
    await backend.open()
    return await work(backend)


async def _nothing(backend: Backend) -> None:
    return None
