"""``GET /metrics``: Prometheus text format, read from counters the hub keeps anyway.

Nothing is counted twice and nothing costs per event: a custom collector reads the hub's plain
integer counters (``HubStats``) and walks the subscriptions only when Prometheus scrapes. The one
per-write measurement, publish-to-write latency, is observed once per written batch, not per
event. Each process serves its own numbers; with several processes, scrape each one (their
``instance`` label tells them apart).
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from jobcast.server.app import Jobcast

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HubCollector(Collector):
    def __init__(self, jc: "Jobcast") -> None:
        self.jc = jc

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hub = self.jc._hub
        if hub is None:  # not started, or stopped: nothing to report
            return
        stats = hub.stats
        for name, value, doc in (
            ("events_published", stats.published, "Events committed by the broker."),
            ("events_delivered", stats.delivered, "Events handed to subscriber buffers."),
            ("events_conflated", stats.conflated, "Pending progress events replaced by newer."),
            ("slow_consumer_evictions", stats.evicted, "Subscribers evicted for falling behind."),
            ("replays", stats.replays, "Resumes with a last event id."),
        ):
            yield CounterMetricFamily(f"jobcast_{name}", doc, value=value)
        resets = CounterMetricFamily(
            "jobcast_resets", "Resumes history could not cover, by reason.", labels=["reason"]
        )
        for reason, count in sorted(stats.resets.items()):
            resets.add_metric([reason], count)
        yield resets
        subscriptions = list(hub._subscriptions)
        yield GaugeMetricFamily(
            "jobcast_subscriptions", "Open subscriptions.", value=len(subscriptions)
        )
        depths = [s.pending_count for s in subscriptions]
        yield GaugeMetricFamily(
            "jobcast_buffer_pending_events_max",
            "Largest number of unwritten events of any subscriber.",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "jobcast_buffer_pending_events_total",
            "Unwritten events over all subscribers.",
            value=sum(depths),
        )
        yield GaugeMetricFamily(
            "jobcast_draining", "1 while the server drains.", value=int(hub.draining)
        )


class Metrics:
    """The registry of one :class:`Jobcast` (no process-global registry: apps stay separate)."""

    def __init__(self, jc: "Jobcast") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(jc))
        self.write_latency = Histogram(
            "jobcast_publish_to_write_seconds",
            "From an event's commit to its first write to a stream.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_write(self, committed_at: float) -> None:
        self.write_latency.observe(max(0.0, time.time() - committed_at))


def metrics_router(jc: "Jobcast") -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(jc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
