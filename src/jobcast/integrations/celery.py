"""Celery tasks as jobcast jobs: two lines in the module that creates the Celery app.

::

    from jobcast.integrations.celery import jobcast_headers, progress, stream, track

    app = Celery("media", broker="amqp://...", backend="redis://...")
    track(app, jobcast="redis://127.0.0.1:6379/0", store="postgresql://...")
    # or, for workers that reach only jobcast's API: a URL and a service token
    track(app, jobcast="https://jobcast.example.com", token=service_token)

    @app.task(bind=True)
    def transcribe(self, video_id: int) -> dict:
        progress(self, 50, stage="transcribing")
        out = stream(self)  # the job's output stream, as ``ctx.stream("output")``
        out.write("first words\n")
        ...

    transcribe.apply_async((42,), headers=jobcast_headers(principal.subject))

The job's id is the task's id (``result.id``), its kind the task's name.

Decisions (cited as G1..G5):

G1. Celery's signals are the only hooks: ``before_task_publish`` (the sender: the job is
    created ``queued``, with the owner from the ``jobcast_owner`` header or the service
    subject), ``task_prerun`` (``running``), ``task_success``, ``task_failure`` and
    ``task_revoked`` (the terminal states). A retry re-publishes the task (``retries`` > 0 in
    its headers): that ``before_task_publish`` puts the job back in ``queued`` (``retrying``),
    before the message leaves, so the next attempt (maybe in another process at once) finds
    it there. ``task_retry`` is not used: it comes after the re-publish, when the next
    attempt may already run.
G2. Signals are process-wide, so each hook acts only for tasks of the tracked app. The app's
    reporter is found through ``_REPORTERS``, keyed weakly by app: the one registry of this
    module, as process-wide as the signals that need it.
G3. A task that raises ``TaskRevokedError`` (``progress`` raises it once the task was revoked,
    in a thread pool where a running task cannot be terminated), or whose revoke terminated
    it, ends ``cancelled``. ``WorkerLostError`` (its pool child died) ends ``failed`` as
    ``Interrupted``.
G4. The worker's main process sweeps this queue's silent ``running`` jobs once a heartbeat
    (``_reporter.P5``), from ``worker_ready`` on: a worker killed with SIGKILL leaves nothing
    ``running`` for longer than the heartbeat window once any worker runs again.
G5. Pool children close their reporter at ``worker_process_shutdown``, the main process at
    ``worker_shutdown``: terminal reports still being retried get a bounded wait.
"""

from __future__ import annotations

import sys
import weakref
from datetime import datetime
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import TaskRevokedError, WorkerLostError

from jobcast.integrations._reporter import INTERRUPTED, Reporter
from jobcast.integrations._streams import OutputWriter
from jobcast.integrations._values import error_of, params_of, result_of
from jobcast.jobs.metadata import JobMetadata
from jobcast.jobs.model import Job, JobState

__all__ = ["OWNER_HEADER", "jobcast_headers", "metadata", "progress", "stream", "track"]

#: The message header that carries the job's owner (a jobcast subject).
OWNER_HEADER = "jobcast_owner"
RUNS_ON = "celery"
#: Longest kind and owner the job store keeps.
MAX_KIND = 64
MAX_OWNER = 255

_REPORTERS: weakref.WeakKeyDictionary[Celery, Reporter] = weakref.WeakKeyDictionary()  # G2


def jobcast_headers(subject: str) -> dict[str, str]:
    """Headers for ``apply_async(headers=...)`` that make ``subject`` the job's owner."""
    return {OWNER_HEADER: subject[:MAX_OWNER]}


def track(
    app: Celery,
    *,
    jobcast: str,
    store: str | None = None,
    token: str | None = None,
    service_subject: str = "service:celery",
    heartbeat: float = 10.0,
    wait: float = 5.0,
) -> Reporter:
    """Report every task of ``app`` as a jobcast job: through the Redis broker ``jobcast``
    and the job store ``store``, or, with ``jobcast="https://..."`` and a service ``token``,
    through jobcast's HTTP API. Call it where the app is created, so senders and workers
    both run it. A task sent without an owner belongs to ``service_subject``."""
    reporter = Reporter(
        RUNS_ON, jobcast=jobcast, store=store, token=token, heartbeat=heartbeat, wait=wait
    )
    _REPORTERS[app] = reporter
    _Hooks(app, reporter, service_subject).connect()
    return reporter


def progress(
    task: Task[Any, Any],
    percent: float,
    *,
    stage: str | None = None,
    message: str | None = None,
) -> None:
    """Report a running task's progress (0-100): cheap and coalesced like ``ctx.progress``.

    Raises ``TaskRevokedError`` once the task was revoked while it runs in this process (G3).
    """
    task_id = task.request.id
    if task_id is None:
        return  # called directly, not as a task
    from celery.worker import state  # loaded by every worker already

    if task_id in state.revoked:
        raise TaskRevokedError(f"task {task_id} was revoked")
    reporter = _REPORTERS.get(task.app)
    if reporter is not None:
        reporter.progress(task_id, percent, stage, message)


def _epoch(eta: Any) -> float | None:
    """A message's ``eta`` header (ISO 8601) in epoch seconds; ``None`` if absent or odd."""
    if not isinstance(eta, str):
        return None
    try:
        return datetime.fromisoformat(eta).timestamp()
    except ValueError:
        return None


def metadata(task: Task[Any, Any]) -> JobMetadata | None:
    """The running task's job metadata (``set``, ``merge``, ``append``, ``increment``,
    ``remove``), coalesced like ``progress``; ``None`` when called outside a tracked task."""
    task_id = task.request.id
    reporter = _REPORTERS.get(task.app)
    if task_id is None or reporter is None:
        return None
    return reporter.metadata(task_id)


def stream(
    task: Task[Any, Any], name: str = "output", content_type: str = "text/plain"
) -> OutputWriter:
    """The running task's output stream ``name`` (``ctx.stream``'s twin): ``write`` text,
    bytes, or JSON values for ``application/json``; cheap, never waits, closed when the task
    ends (``_reporter.P6``). Readers get it at ``/v1/stream/jobs/{task id}/{name}``.

    Raises ``RuntimeError`` outside a task of a tracked app."""
    task_id = task.request.id
    reporter = _REPORTERS.get(task.app)
    if task_id is None or reporter is None:
        raise RuntimeError("output streams are for the running task of a tracked Celery app")
    return reporter.stream(str(task_id), name, content_type)


class _Hooks:
    """The signal receivers for one app (G1, G2)."""

    def __init__(self, app: Celery, reporter: Reporter, service_subject: str) -> None:
        self.app = app
        self.reporter = reporter
        self.service_subject = service_subject

    def connect(self) -> None:
        uid = f"jobcast-{id(self.app)}"
        for signal, receiver in (
            (signals.before_task_publish, self.before_publish),
            (signals.task_prerun, self.prerun),
            (signals.task_success, self.success),
            (signals.task_failure, self.failure),
            (signals.task_revoked, self.revoked),
            (signals.worker_ready, self.worker_ready),
            (signals.worker_process_init, self.process_init),
            (signals.worker_process_shutdown, self.shutdown),
            (signals.worker_shutdown, self.shutdown),
        ):
            signal.connect(receiver, weak=False, dispatch_uid=f"{uid}-{signal.name}")

    def _ours(self, task: Any) -> bool:
        return isinstance(task, Task) and task.app is self.app

    def _job(self, task_id: str, name: str, owner: Any, args: Any, kwargs: Any) -> Job:
        return Job(
            id=task_id,
            kind=name[:MAX_KIND],
            owner=str(owner)[:MAX_OWNER] if owner else self.service_subject,
            params=params_of(args, kwargs),
            runs_on=RUNS_ON,
        )

    def before_publish(
        self, sender: Any = None, body: Any = None, headers: Any = None, **_: Any
    ) -> None:
        if not isinstance(headers, dict) or sender not in self.app.tasks:
            return
        if headers.get("retries"):  # a retry's re-publish: the job lives on (G1)
            # Reported here, before the message leaves, so the next attempt never starts
            # before its job is back in ``queued``; ``retry`` runs in its ``except`` block.
            cause = sys.exc_info()[1]
            retry_at = _epoch(headers.get("eta"))
            self.reporter.retrying(str(headers["id"]), error_of(cause, "Retry"), retry_at)
            return
        args, kwargs = (body[0], body[1]) if isinstance(body, tuple | list) else ((), {})
        job = self._job(str(headers["id"]), str(sender), headers.get(OWNER_HEADER), args, kwargs)
        self.reporter.queued(job)

    def prerun(
        self, task_id: str = "", task: Any = None, args: Any = (), kwargs: Any = None, **_: Any
    ) -> None:
        if not self._ours(task):
            return
        owner = getattr(task.request, OWNER_HEADER, None)
        self.reporter.started(self._job(task_id, task.name, owner, args, kwargs))

    def success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        task_id = str(sender.request.id)
        self.reporter.finished(task_id, JobState.SUCCEEDED, result=result_of(result))

    def failure(
        self, sender: Any = None, task_id: str = "", exception: Any = None, **_: Any
    ) -> None:
        if not self._ours(sender):
            return
        if isinstance(exception, TaskRevokedError):  # G3
            self.reporter.finished(task_id, JobState.CANCELLED, message="revoked")
        elif isinstance(exception, WorkerLostError):
            self.reporter.finished(task_id, JobState.FAILED, error=dict(INTERRUPTED))
        else:
            self.reporter.finished(task_id, JobState.FAILED, error=error_of(exception))

    def revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if not self._ours(sender) or request is None:
            return
        self.reporter.finished(str(request.id), JobState.CANCELLED, message="revoked")

    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            self.reporter.sweep_every_heartbeat()  # G4

    def process_init(self, **_: Any) -> None:
        self.reporter.warm()  # a pool child connects before its first task asks

    def shutdown(self, sender: Any = None, **_: Any) -> None:  # G5
        self.reporter.close()
