"""RQ jobs as jobcast jobs: a queue class for the sender, a job and worker class for workers.

::

    from jobcast.integrations.rq import TrackedQueue, jobcast_meta, progress, stream

    queue = TrackedQueue("media", connection=redis, jobcast="redis://.../0", store="postgresql://...")
    job = queue.enqueue(transcribe, 42, meta=jobcast_meta(principal.subject))

    def transcribe(video_id: int) -> dict:
        progress(50, stage="transcribing")
        stream().write("first words\n")  # the job's output stream, as ``ctx.stream``
        ...

    # workers: rq worker -w jobcast.integrations.rq.TrackedWorker \\
    #            -j jobcast.integrations.rq.TrackedJob media
    # with JOBCAST_BROKER_URL and JOBCAST_STORE_URL set, as for ``jobcast worker``

The job's id is RQ's job id, its kind the function's name.

Decisions (cited as Q1..Q5):

Q1. RQ's public hooks only: the queue's ``create_job`` (jobcast's ``on_success``,
    ``on_failure`` and ``on_stopped`` callbacks on every job; callbacks given by the caller
    are refused rather than silently replaced) and ``enqueue_job`` (the job is created
    ``queued``, the owner from ``meta["jobcast_owner"]`` or the service subject); the job
    class's ``perform`` (``running``, in the work horse); the callbacks (the ends); the
    worker's ``handle_work_horse_killed`` (a work horse that died: ``failed`` as
    ``Interrupted``).
Q2. A failure with retries left (``Retry``) puts the job back in ``queued`` with its error;
    RQ re-enqueues it only after the failure callback, so no attempt can start before.
Q3. Workers take their jobcast settings from the environment (``JOBCAST_BROKER_URL``,
    ``JOBCAST_STORE_URL``), as ``jobcast worker`` does: RQ creates jobs and workers itself, so
    nothing can be handed to their constructors. Each process makes one reporter
    (``_reporter``), cached in ``_PROCESS``; a forked work horse gets its own (``_reporter.P1``).
Q4. A stopped job (``send_stop_job_command``, what a cancel sends) ends ``cancelled``; RQ's
    abandoned jobs (found by its registry cleanup) end ``failed`` as ``Interrupted``.
Q5. ``TrackedWorker`` sweeps this queue's silent ``running`` jobs once a heartbeat from its
    start (``_reporter.P5``): a worker killed with SIGKILL leaves nothing ``running``.
"""

from __future__ import annotations

import functools
from typing import Any

from rq import Queue, Worker, get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Callback, Job

from jobcast.integrations._reporter import INTERRUPTED, Reporter
from jobcast.integrations._streams import OutputWriter
from jobcast.integrations._values import error_of, params_of, result_of
from jobcast.jobs.metadata import JobMetadata
from jobcast.jobs.model import Job as JobcastJob
from jobcast.jobs.model import JobState

__all__ = [
    "OWNER_META",
    "TrackedJob",
    "TrackedQueue",
    "TrackedWorker",
    "jobcast_meta",
    "metadata",
    "progress",
    "stream",
]

OWNER_META = "jobcast_owner"
RUNS_ON = "rq"
SERVICE_SUBJECT = "service:rq"
MAX_KIND = 64
MAX_OWNER = 255


def jobcast_meta(subject: str, **meta: Any) -> dict[str, Any]:
    """``meta`` for ``enqueue(..., meta=...)`` that makes ``subject`` the job's owner."""
    return {**meta, OWNER_META: subject[:MAX_OWNER]}


@functools.cache
def _process_reporter() -> Reporter:  # Q3: one per process, from the environment
    from jobcast.config import Settings

    settings = Settings()
    return Reporter(
        RUNS_ON,
        jobcast=settings.resolved_broker_url,
        store=settings.resolved_store_url,
        heartbeat=float(settings.worker_heartbeat_seconds),
    )


def _job(job: Job, service_subject: str = SERVICE_SUBJECT) -> JobcastJob:
    owner = (job.meta or {}).get(OWNER_META)
    return JobcastJob(
        id=job.id,
        kind=str(job.func_name)[:MAX_KIND],
        owner=str(owner)[:MAX_OWNER] if owner else service_subject,
        params=params_of(job.args, job.kwargs),
        runs_on=RUNS_ON,
    )


def progress(percent: float, *, stage: str | None = None, message: str | None = None) -> None:
    """Report the current RQ job's progress (0-100): cheap and coalesced like ``ctx.progress``."""
    job = get_current_job()
    if job is not None:
        _process_reporter().progress(job.id, percent, stage, message)


def metadata() -> JobMetadata | None:
    """The current RQ job's metadata, coalesced like ``progress``; ``None`` outside a job."""
    job = get_current_job()
    return None if job is None else _process_reporter().metadata(job.id)


def stream(name: str = "output", content_type: str = "text/plain") -> OutputWriter:
    """The current RQ job's output stream ``name`` (``ctx.stream``'s twin): cheap writes,
    closed when the job ends (``_reporter.P6``). ``RuntimeError`` outside a job."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("output streams are for the running job of an RQ worker")
    return _process_reporter().stream(job.id, name, content_type)


# -- the callbacks (Q1, Q2, Q4): run in the work horse, or the worker for a stopped job ---------


def succeeded(job: Job, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    _process_reporter().finished(job.id, JobState.SUCCEEDED, result=result_of(result))


def failed(job: Job, connection: Any, typ: Any, value: Any, tb: Any) -> None:
    reporter = _process_reporter()
    if isinstance(value, AbandonedJobError):
        reporter.finished(job.id, JobState.FAILED, error=dict(INTERRUPTED))
    elif job.should_retry:  # Q2
        reporter.retrying(job.id, error_of(value))
    else:
        reporter.finished(job.id, JobState.FAILED, error=error_of(value))


def stopped(job: Job, connection: Any) -> None:
    _process_reporter().finished(job.id, JobState.CANCELLED, message="stopped")


class TrackedQueue(Queue):
    """A queue whose jobs are jobcast jobs. ``jobcast`` and ``store`` name the Redis broker and
    the job store (default: the ``JOBCAST_*`` environment, Q3)."""

    def __init__(
        self,
        *args: Any,
        jobcast: str | None = None,
        store: str | None = None,
        token: str | None = None,
        service_subject: str = SERVICE_SUBJECT,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("job_class", TrackedJob)
        super().__init__(*args, **kwargs)
        self.service_subject = service_subject
        self.reporter = (
            Reporter(RUNS_ON, jobcast=jobcast, store=store, token=token)
            if jobcast
            else _process_reporter()
        )

    def create_job(self, *args: Any, **kwargs: Any) -> Job:
        for name, callback in (("on_success", succeeded), ("on_failure", failed)):
            if kwargs.get(name) is not None:  # Q1: never replaced silently
                raise ValueError(f"{name} is jobcast's on a TrackedQueue")
            kwargs[name] = Callback(callback)
        if kwargs.get("on_stopped") is not None:
            raise ValueError("on_stopped is jobcast's on a TrackedQueue")
        kwargs["on_stopped"] = Callback(stopped)
        job: Job = super().create_job(*args, **kwargs)
        return job

    def enqueue_job(self, job: Job, *args: Any, **kwargs: Any) -> Job:
        # A retry re-enqueues through RQ's private path, not this one (Q2).
        self.reporter.queued(_job(job, self.service_subject))
        enqueued: Job = super().enqueue_job(job, *args, **kwargs)
        return enqueued


class TrackedJob(Job):
    """The job class of tracked queues' workers (``rq worker -j``): ``running`` when performed."""

    def perform(self) -> Any:
        _process_reporter().started(_job(self))
        return super().perform()


class TrackedWorker(Worker):
    """A worker (``rq worker -w``) that settles jobs whose work horse died (Q1) and sweeps
    dead workers' jobs (Q5)."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        _process_reporter().sweep_every_heartbeat()
        done: bool = super().work(*args, **kwargs)
        return done

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """In the work horse, which ends with ``os._exit`` (no atexit): a terminal state still
        being retried (jobcast's store down) gets its bounded wait here (``_reporter.P2``)."""
        try:
            done: bool = super().perform_job(job, queue)
        finally:
            _process_reporter().close()
        return done

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        _process_reporter().finished(job.id, JobState.FAILED, error=dict(INTERRUPTED))
