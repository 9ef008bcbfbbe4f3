"""``/api/job-reports``: the reports of queue tasks whose workers reach jobcast over HTTP.

A Celery, RQ or Dramatiq worker tracked with ``jobcast="https://..."`` and a service token
(``jobcast.integrations._http``) posts what its tasks do here; this server applies it to the
jobs with ``jobs/reported.py``, as a worker reaching the broker and store applies it itself,
so both paths mean the same thing.

Decisions (cited as J1..J5):

J1. Service and admin tokens only: a report creates jobs for any owner and ends any job of
    its queue. No credential: 401; another role or a stream ticket: 403.
J2. A batch is validated whole before any report in it is applied (a 422 names the first bad
    field, ``reports.3.progress``); then its reports are applied in order, and the answer
    holds one result per report: ``applied``; ``exists`` (a ``queued`` report sent again);
    ``terminal`` (a ``running`` report for a job that ended first: the worker skips the
    task); ``unknown`` (no such running job here: the report is dropped).
J3. This server holds the running jobs it was told of (``ReportedJobs.live``), so progress
    is coalesced here like a native job's. The reports of one job should reach one server:
    behind a load balancer, a job held by two instances numbers its events twice.
J4. A terminal report waits for its store write at most ``END_WAIT`` seconds; the write goes
    on after the answer (live.L5). A terminal report carrying the job creates it first when
    the store has none (its ``running`` report never arrived).
J5. ``dropped`` (progress the reporter could not deliver) and what this server coalesced or
    could not publish are counted in ``/metrics`` (``integrations/_metrics.py``).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jobcast.auth import Principal
from jobcast.errors import Forbidden, Unauthorized
from jobcast.integrations._metrics import progress_family
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.reported import ReportedJobs
from jobcast.server.http.errors import jobcast_router

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobcast.server.runtime import Runtime

#: Reports in one request.
MAX_REPORTS = 1000
#: Seconds a terminal report waits for its store write (J4).
END_WAIT = 5.0

_ID = r"^[A-Za-z0-9_.:@-]{1,128}$"  # a valid topic segment: the job's topic is jobs/<id>
_TEXT = r"^[^\x00]*$"  # a database text column cannot hold NUL (PostgreSQL refuses it)


def _storable(value: Any) -> Any:
    """JSON the job store and the events can hold (orjson: 64-bit integers, bounded depth)."""
    try:
        orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError is one
        raise ValueError(f"not storable as JSON: {exc}") from None
    return value


Storable = Annotated[Any, AfterValidator(_storable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskJob(_Strict):
    id: str = Field(pattern=_ID, description="The task's id, which becomes the job's.")
    kind: str = Field(pattern=_TEXT, min_length=1, max_length=64, description="The task's name.")
    owner: str = Field(
        pattern=_TEXT, min_length=1, max_length=255, description="The job owner's subject."
    )
    params: Annotated[dict[str, Any], AfterValidator(_storable)] = Field(default_factory=dict)
    runs_on: str = Field(pattern=r"^[a-z0-9_-]{1,32}$", description="celery, rq, dramatiq.")


class TaskError(_Strict):
    type: str = Field(pattern=_TEXT, min_length=1, max_length=200)
    message: str = Field(pattern=_TEXT, max_length=2000)


class Queued(_Strict):
    type: Literal["queued"]
    job: TaskJob


class Running(_Strict):
    type: Literal["running"]
    job: TaskJob


class Progress(_Strict):
    type: Literal["progress"]
    id: str = Field(pattern=_ID)
    progress: float = Field(ge=0, le=100)
    stage: str | None = Field(None, pattern=_TEXT, max_length=200)
    message: str | None = Field(None, pattern=_TEXT, max_length=2000)


class Beat(_Strict):
    type: Literal["beat"]
    id: str = Field(pattern=_ID)


class Retrying(_Strict):
    type: Literal["retrying"]
    id: str = Field(pattern=_ID)
    error: TaskError
    retry_at: float | None = Field(None, ge=0, description="When it runs again (epoch s).")


class Succeeded(_Strict):
    type: Literal["succeeded"]
    id: str = Field(pattern=_ID)
    result: Storable = None
    job: TaskJob | None = None


class Failed(_Strict):
    type: Literal["failed"]
    id: str = Field(pattern=_ID)
    error: TaskError
    job: TaskJob | None = None


class Cancelled(_Strict):
    type: Literal["cancelled"]
    id: str = Field(pattern=_ID)
    message: str | None = Field(None, pattern=_TEXT, max_length=2000)
    job: TaskJob | None = None


Report = Annotated[
    Queued | Running | Progress | Beat | Retrying | Succeeded | Failed | Cancelled,
    Field(discriminator="type"),
]


class ReportBatch(_Strict):
    reports: list[Report] = Field(min_length=1, max_length=MAX_REPORTS)
    dropped: int = Field(0, ge=0, le=1_000_000_000, description="Progress the sender dropped.")


class ReportResults(BaseModel):
    results: list[Literal["applied", "exists", "terminal", "unknown"]]


class SweepRequest(_Strict):
    runs_on: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    silent_seconds: float = Field(gt=0, le=86_400)
    dropped: int = Field(0, ge=0, le=1_000_000_000)


class Swept(BaseModel):
    swept: int


def _job(fields: TaskJob) -> Job:
    return Job(
        id=fields.id,
        kind=fields.kind,
        owner=fields.owner,
        params=fields.params,
        runs_on=fields.runs_on,
    )


class _Reports(Collector):
    """This server's reported jobs (made at the first report, on the running hub) and what
    their progress cost (J5)."""

    def __init__(self, jc: "Runtime") -> None:
        self.jc = jc
        self.jobs: ReportedJobs | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    def held(self) -> ReportedJobs:
        jc = self.jc
        if self.jobs is None or self.jobs.hub is not jc.hub:  # a new lifespan: a new hub
            self.jobs = ReportedJobs(  # a new lifespan's stream store too (reported.R6)
                jc.hub,
                jc.store,
                jc.runner.access,
                jc.settings.runner_options(),
                outputs=jc.streams,
            )
        return self.jobs

    def collect(self) -> "Iterator[Metric]":
        counts = collections.Counter(self.counts)
        if self.jobs is not None:
            counts.update(self.jobs.counts)
        counts["dropped"] += counts.pop("unpublished", 0)
        yield progress_family(counts)

    async def apply(self, report: Any) -> str:
        jobs = self.held()
        if isinstance(report, Queued):  # "exists": sent again after an answer was lost
            return "applied" if await jobs.queued(_job(report.job)) else "exists"
        if isinstance(report, Running):
            if report.job.id in jobs.live:  # sent again (integrations._http.H2)
                return "applied"
            return "applied" if await jobs.started(_job(report.job)) else "terminal"
        if isinstance(report, Progress | Beat):
            live = await jobs.held(report.id)
            if live is None:
                if isinstance(report, Progress):
                    self.counts["dropped"] += 1
                return "unknown"
            if isinstance(report, Beat):
                await jobs.beat(report.id)
            else:
                live.report_progress(report.progress, report.message, report.stage)
            return "applied"
        if isinstance(report, Retrying):
            await jobs.retrying(report.id, report.error.model_dump(), report.retry_at)
            return "applied"
        return await self._end(jobs, report)

    async def _end(self, jobs: ReportedJobs, report: Succeeded | Failed | Cancelled) -> str:
        if report.job is not None and await jobs.store.get(report.id) is None:  # J4
            await jobs.started(_job(report.job))
        fields: dict[str, Any]
        if isinstance(report, Succeeded):
            fields = {"result": report.result}
        elif isinstance(report, Failed):
            fields = {"error": report.error.model_dump()}
        else:
            fields = {"message": report.message or "revoked"}
        with contextlib.suppress(TimeoutError):  # J4: stored later, whatever the answer
            async with asyncio.timeout(END_WAIT):  # never loses a cancel, as wait_for can
                await jobs.finished(report.id, JobState(report.type), **fields)
        return "applied"


def job_reports_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["jobs"])
    reports = _Reports(jc)
    with contextlib.suppress(ValueError):  # a second router of one runtime: counted once
        jc.metrics.registry.register(reports)

    async def service(principal: Annotated[Principal | None, Depends(jc.principal)]) -> None:
        if principal is None:  # J1
            raise Unauthorized("job reports need a service token", reason="missing_token")
        jc.policy.refuse_ticket(principal)
        if not principal.is_privileged:
            raise Forbidden(f"{principal.subject!r} may not report jobs: a service token may")

    @router.post(
        "/api/job-reports",
        response_model=ReportResults,
        summary="Apply the reports of queue tasks (Celery, RQ, Dramatiq workers over HTTP)",
        dependencies=[Depends(service)],
    )
    async def report_jobs(batch: ReportBatch) -> dict[str, Any]:
        reports.counts["dropped"] += batch.dropped
        return {"results": [await reports.apply(report) for report in batch.reports]}

    @router.post(
        "/api/job-reports/sweep",
        response_model=Swept,
        summary="Fail a queue's running jobs silent for longer than its heartbeat window",
        dependencies=[Depends(service)],
    )
    async def sweep_jobs(request: SweepRequest) -> dict[str, int]:
        reports.counts["dropped"] += request.dropped
        swept = await reports.held().sweep(request.runs_on, request.silent_seconds)
        return {"swept": swept}

    return router
