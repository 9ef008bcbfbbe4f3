"""The job metrics of one process: store writes and errors, and the durations of the jobs
that ended in it. A server and a ``jobcast worker`` both report them (with the Redis broker,
through the shared snapshots of ``shared_metrics.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobcast.jobs.model import JobState
from jobcast.jobs.stats import DURATION_BUCKETS, JobStats

if TYPE_CHECKING:
    from jobcast.stores.base import JobStore


class RunsJobs(Protocol):
    """What runs jobs in this process: the embedded runner, or a worker's lifecycle engine."""

    @property
    def stats(self) -> JobStats: ...


class JobsCollector(Collector):
    """The job store's writes and errors, and the durations of jobs that ended here."""

    def __init__(
        self,
        store: Callable[[], JobStore | None],
        runner: Callable[[], RunsJobs | None],
    ) -> None:
        self.store = store
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        store = self.store()
        if store is not None:
            stats = store.stats
            yield CounterMetricFamily(
                "jobcast_store_rows_written",
                "Job rows inserted or updated by the job store (progress writes coalesced).",
                value=stats.rows_written,
            )
            yield CounterMetricFamily(
                "jobcast_store_transactions",
                "Job store transactions that wrote job rows (each a group commit).",
                value=stats.transactions,
            )
            errors = CounterMetricFamily(
                "jobcast_store_errors",
                "Job store database errors (answered 503), by operation.",
                labels=["operation"],
            )
            errors.add_metric(["read"], stats.read_errors)
            errors.add_metric(["write"], stats.write_errors)
            yield errors
        runner = self.runner()
        if runner is None:
            return
        durations = HistogramMetricFamily(
            "jobcast_job_duration_seconds",
            "From a job's start (or submission, if it never started) to its end, for jobs "
            "that ended in this process, by terminal state.",
            labels=["state"],
        )
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            found = runner.stats.durations.get(state)
            counts = found.counts if found is not None else [0] * (len(DURATION_BUCKETS) + 1)
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            durations.add_metric(
                [state.value], buckets, sum_value=found.total if found is not None else 0.0
            )
        yield durations
