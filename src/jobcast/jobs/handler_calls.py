"""Calls of job handlers (lifecycle.R1, R2): each on the event loop or in the thread pool, bounded
by its timeout, cancellable by a user or a shutdown, and ended with an :class:`Ending` that the
lifecycle engine turns into the job's terminal state. No store or hub I/O happens here."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from jobcast.errors import InvalidInput
from jobcast.events import dumps
from jobcast.jobs.context import JobCancelled, JobContext
from jobcast.jobs.input_wait import Parked
from jobcast.jobs.live import LiveJob
from jobcast.jobs.model import JobState
from jobcast.jobs.registry import HandlerSpec
from jobcast.jobs.retry import Retry, RetryPolicy
from jobcast.jobs.threads import HandlerThreads

logger = logging.getLogger("jobcast.jobs")


def job_error(kind: str, message: str) -> dict[str, str]:
    """A job's ``error`` field."""
    return {"type": kind, "message": message}


@dataclass(frozen=True, slots=True)
class Ending:
    """How a handler call ended: the job's terminal state and its fields, ``None`` for a
    call a shutdown interrupted (the lifecycle engine applies R3), or ``RUNNING`` for a run
    that parked in a wait for input (input_wait.N7).

    A failure says whether its handler's retry policy lets it retry (``retryable``, retry.T4)
    and, when the handler raised ``Retry(after=...)``, after how long."""

    state: JobState | None
    fields: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False
    retry_after: float | None = None


INTERRUPTED = Ending(None)
PARKED = Ending(JobState.RUNNING)


def after_interruption(
    spec: HandlerSpec | None, attempts: int, max_attempts: int, why: str
) -> Ending:
    """lifecycle.R3: a job whose run was interrupted (a crash, a shutdown, a dead worker) runs
    again when its handler is re-runnable (``retry_safe``, or a retry policy) and attempts
    remain (retry.T2); otherwise it fails."""
    if spec is not None and spec.rerunnable and attempts < max_attempts:
        return Ending(JobState.QUEUED, {"message": f"re-queued: {why}"})
    reason = (
        "its handler is not marked retry_safe"
        if spec is None or not spec.rerunnable
        else f"it was already tried {attempts} times"
    )
    error = job_error("Interrupted", f"{why} (attempt {attempts}); not retried: {reason}")
    return Ending(JobState.FAILED, {"error": error})


class HandlerCalls:
    """The handler calls running now, by job id, so that a cancel or a shutdown reaches them."""

    def __init__(self, threads: HandlerThreads, default_timeout: float | None) -> None:
        self.threads = threads
        self.default_timeout = default_timeout
        self._running: dict[str, asyncio.Future[Any]] = {}

    def cancel(self, job_id: str) -> None:
        call = self._running.get(job_id)
        if call is not None:
            call.cancel()

    async def call(self, live: LiveJob, spec: HandlerSpec, ctx: JobContext) -> Ending:
        job = live.job
        args = (ctx, spec.handler_params(job.params))
        work: Future[Any] | None = None
        if live.cancel_requested:
            task: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            task.cancel()
        elif spec.is_async:
            task = asyncio.ensure_future(spec.fn(*args))
        else:  # R2
            work = self.threads.submit(spec.fn, *args)
            task = asyncio.wrap_future(work)
        self._running[job.id] = task
        timeout = spec.timeout or self.default_timeout
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        finally:
            self._running.pop(job.id, None)
        live.request_cancel()  # whatever happened, the handler's later reports are refused
        if not done:
            task.cancel()
        if work is not None and not work.done():
            self.threads.outlived(job.id, work)
        if not done:
            message = f"the job did not finish within its {timeout:g} s timeout"
            retryable = spec.retry is not None and spec.retry.retry_timeouts  # retry.T4
            error = job_error("Timeout", message)
            return Ending(JobState.FAILED, {"error": error}, retryable=retryable)
        return _ending(live, spec, task)


def _ending(live: LiveJob, spec: HandlerSpec, task: asyncio.Future[Any]) -> Ending:
    if task.cancelled() or isinstance(task.exception(), JobCancelled):
        if live.stop_reason == "shutdown":
            return INTERRUPTED
        return Ending(JobState.CANCELLED, {"message": "cancelled"})
    if (exc := task.exception()) is not None:
        if isinstance(exc, Parked):  # input_wait.N7
            return PARKED
        if not isinstance(exc, Exception):
            raise exc
        logger.info("job %s failed", live.job.id, exc_info=exc)
        error = job_error(type(exc).__name__, str(exc))
        policy = spec.retry or RetryPolicy()
        # retry.T4: Retry asks for another attempt even without a declared policy
        retryable = policy.retries(exc) and (spec.retry is not None or isinstance(exc, Retry))
        after = exc.after if isinstance(exc, Retry) else None
        return Ending(JobState.FAILED, {"error": error}, retryable=retryable, retry_after=after)
    result = task.result()
    try:
        dumps(result)
    except InvalidInput as bad:
        error = job_error("InvalidResult", f"the handler's result is not JSON: {bad}")
        return Ending(JobState.FAILED, {"error": error})
    return Ending(JobState.SUCCEEDED, {"result": result})
