"""What a reporting process's progress cost, as Prometheus metrics.

``jobcast_integration_progress_reports_total{outcome}`` counts progress reports that never
became an event of their own: ``coalesced`` (a later report of the same job replaced it
before it was published: by design, live.L2) and ``dropped`` (jobcast could not be reached:
no job to report to, the broker or the HTTP API refused it, ``_reporter.P3``).
``jobcast_integration_reports_failed_total{report}`` counts the other reports that failed,
and ``jobcast_store_rows_written_total`` the process's own job store writes.

A worker process shares them through the broker's Redis (``shared_metrics.py``), so any
server's ``/metrics`` shows them, labelled with the worker's ``process``. A server that
takes reports over HTTP counts the same progress metric for the reports it applies, and
for those its reporters dropped (``server/routes/job_reports.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from jobcast.jobs.metrics import JobsCollector

if TYPE_CHECKING:
    from jobcast.config import Settings
    from jobcast.integrations._reporter import Reporter
    from jobcast.shared_metrics import SharedMetrics
    from jobcast.stores.base import JobStore

PROGRESS = "jobcast_integration_progress_reports"
OUTCOMES = ("coalesced", "dropped")


def progress_family(counts: dict[str, int]) -> CounterMetricFamily:
    """The progress metric from counts by outcome (both outcomes, from 0)."""
    family = CounterMetricFamily(
        PROGRESS,
        "Progress reports of queue tasks that were not published as events: coalesced "
        "(replaced by a later report, by design) or dropped (jobcast could not be reached).",
        labels=["outcome"],
    )
    for outcome in OUTCOMES:
        family.add_metric([outcome], counts.get(outcome, 0))
    return family


class ReporterCollector(Collector):
    """One reporter's counts (``_reporter.P3``)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def collect(self) -> Iterator[Metric]:
        yield progress_family(self.reporter.progress_counts())
        failed = CounterMetricFamily(
            "jobcast_integration_reports_failed",
            "Reports of queue tasks (other than progress) that jobcast did not take.",
            labels=["report"],
        )
        for key, count in sorted(self.reporter.counts.items()):
            if key.endswith("_failed"):
                failed.add_metric([key.removesuffix("_failed")], count)
        yield failed


def render_for(reporter: Reporter, store: Callable[[], JobStore | None]) -> Callable[[], bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReporterCollector(reporter))
    # The store writes of this process (progress writes coalesced), as a server reports its.
    registry.register(JobsCollector(store, lambda: None))
    return lambda: generate_latest(registry)


def shared_metrics(
    reporter: Reporter, settings: Settings, store: Callable[[], JobStore | None]
) -> SharedMetrics:
    """This process's metrics, shared through the broker's Redis (call on a running loop)."""
    from jobcast.shared_metrics import SharedMetrics

    return SharedMetrics(
        settings.resolved_broker_url,
        settings.metrics_snapshot_seconds,
        render_for(reporter, store),
    )
