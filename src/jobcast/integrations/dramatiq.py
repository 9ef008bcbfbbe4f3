"""Dramatiq messages as jobcast jobs: one middleware, added where the broker is set up.

::

    from jobcast.integrations.dramatiq import JobcastMiddleware, progress, stream

    broker = RedisBroker(url="redis://127.0.0.1:6379/2")
    broker.add_middleware(JobcastMiddleware(jobcast="redis://.../0", store="postgresql://..."))
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=3)
    def transcribe(video_id: int) -> None:
        progress(50, stage="transcribing")
        stream().write("first words\n")  # the job's output stream, as ``ctx.stream``

    transcribe.send_with_options(args=(42,), jobcast_owner=principal.subject)

The job's id is the message id (``message.message_id``), its kind the actor's name.

Decisions (cited as M1..M4):

M1. Dramatiq's middleware hooks only: ``before_enqueue`` (``queued``; owner from the
    ``jobcast_owner`` option or the service subject), ``before_process_message``
    (``running``), ``after_process_message`` (the ends), ``after_worker_boot`` (the sweep
    of dead workers' jobs, ``_reporter.P5``), ``before_worker_shutdown``.
M2. A retry is reported where the Retries middleware re-enqueues the message
    (``before_enqueue`` with ``retries`` > 0): back to ``queued`` (``retrying``), before the
    message leaves. Whether a failure is final is known only once every middleware's
    ``after_process_message`` ran (they run in reverse order, Retries maybe after this one):
    a final failure is nacked (``after_nack``: ``failed``), a retried one acked.
M3. A message whose job was cancelled while queued is skipped (``SkipMessage``) when a
    worker takes it. Dramatiq cannot stop a running message: cancelling one is refused
    (``dramatiq_control.py``).
M4. ``progress`` finds the current message through the broker's middleware (a thread-local
    of this middleware), so it needs no module state and no other middleware.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import dramatiq
from dramatiq import Broker, Middleware
from dramatiq.middleware import SkipMessage

from jobcast.integrations._reporter import Reporter
from jobcast.integrations._streams import OutputWriter
from jobcast.integrations._values import error_of, params_of, result_of
from jobcast.jobs.metadata import JobMetadata
from jobcast.jobs.model import Job, JobState

__all__ = ["OWNER_OPTION", "JobcastMiddleware", "metadata", "progress", "stream"]

OWNER_OPTION = "jobcast_owner"
RUNS_ON = "dramatiq"
MAX_KIND = 64
MAX_OWNER = 255


def progress(percent: float, *, stage: str | None = None, message: str | None = None) -> None:
    """Report the current message's progress (0-100): cheap and coalesced (M4)."""
    for middleware in dramatiq.get_broker().middleware:
        if isinstance(middleware, JobcastMiddleware):
            middleware.progress(percent, stage, message)
            return


def metadata() -> JobMetadata | None:
    """The current message's job metadata, coalesced like ``progress``; ``None`` outside one."""
    for middleware in dramatiq.get_broker().middleware:
        if isinstance(middleware, JobcastMiddleware):
            return middleware.metadata()
    return None


def stream(name: str = "output", content_type: str = "text/plain") -> OutputWriter:
    """The current message's output stream ``name`` (``ctx.stream``'s twin): cheap writes,
    closed when the message's job ends (``_reporter.P6``). ``RuntimeError`` outside one."""
    for middleware in dramatiq.get_broker().middleware:
        if isinstance(middleware, JobcastMiddleware):
            return middleware.stream(name, content_type)
    raise RuntimeError("output streams need the broker's JobcastMiddleware")


class JobcastMiddleware(Middleware):
    """Reports every message of the broker's actors as a jobcast job (M1)."""

    def __init__(
        self,
        *,
        jobcast: str,
        store: str | None = None,
        token: str | None = None,
        service_subject: str = "service:dramatiq",
        heartbeat: float = 10.0,
        wait: float = 5.0,
    ) -> None:
        self.reporter = Reporter(
            RUNS_ON, jobcast=jobcast, store=store, token=token, heartbeat=heartbeat, wait=wait
        )
        self.service_subject = service_subject
        self._current = threading.local()  # M4
        #: A failed run's error until its message is acked (retried) or nacked (final).
        self._errors: dict[str, dict[str, str]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {OWNER_OPTION}

    def _job(self, message: Any) -> Job:
        owner = message.options.get(OWNER_OPTION)
        return Job(
            id=message.message_id,
            kind=str(message.actor_name)[:MAX_KIND],
            owner=str(owner)[:MAX_OWNER] if owner else self.service_subject,
            params=params_of(message.args, message.kwargs),
            runs_on=RUNS_ON,
        )

    def progress(self, percent: float, stage: str | None, message: str | None) -> None:
        job_id = getattr(self._current, "job_id", None)
        if job_id is not None:
            self.reporter.progress(job_id, percent, stage, message)

    def metadata(self) -> JobMetadata | None:
        job_id = getattr(self._current, "job_id", None)
        return None if job_id is None else self.reporter.metadata(job_id)

    def stream(self, name: str, content_type: str) -> OutputWriter:
        job_id = getattr(self._current, "job_id", None)
        if job_id is None:
            raise RuntimeError("output streams are for the message a worker is processing")
        return self.reporter.stream(job_id, name, content_type)

    def before_enqueue(self, broker: Broker, message: Any, delay: int) -> None:
        if message.options.get("retries"):  # M2: ``retry`` runs in the worker's except block
            cause = sys.exc_info()[1]
            retry_at = time.time() + delay / 1000 if delay else None
            self.reporter.retrying(message.message_id, error_of(cause, "Retry"), retry_at)
        else:
            self.reporter.queued(self._job(message))

    def before_process_message(self, broker: Broker, message: Any) -> None:
        if not self.reporter.started(self._job(message)):
            raise SkipMessage(f"job {message.message_id} was cancelled")  # M3
        self._current.job_id = message.message_id

    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._current.job_id = None
        if exception is None:
            self.reporter.finished(message.message_id, JobState.SUCCEEDED, result=result_of(result))
        else:  # final or retried: known at the ack (M2)
            self._errors[message.message_id] = error_of(exception)

    def after_nack(self, broker: Broker, message: Any) -> None:
        """A failed message, retries exhausted or not retryable: the job fails (M2)."""
        error = self._errors.pop(message.message_id, None)
        if error is not None:
            self.reporter.finished(message.message_id, JobState.FAILED, error=error)

    def after_ack(self, broker: Broker, message: Any) -> None:
        self._errors.pop(message.message_id, None)  # retried: reported at its re-enqueue

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self.reporter.sweep_every_heartbeat()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.reporter.close()
