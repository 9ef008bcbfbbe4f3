"""Prometheus metrics (``GET /metrics``), read from counters the hub keeps anyway.

Nothing is counted twice and nothing costs per event: custom collectors read plain integer
counters (``HubStats``, the store's ``StoreStats``, the runner's ``JobStats``) and walk the
subscriptions only when Prometheus scrapes. The one per-write measurement, publish-to-write
latency, is observed once per written batch, not per event. Everything else is counted once per
connection, subscription, publish call, store transaction or finished job.

What a scrape costs (measured on a 2-core machine): rendering about 100 samples, 0.3 ms; one
pass over this process's subscriptions (transport and buffer depth of each), 0.5 ms per 10,000
streams; one ``SELECT state, count(*) FROM jobs GROUP BY state`` on the job store, an index
scan of about 4 ms per 100,000 job rows on SQLite, awaited (it runs in the driver's thread or
on the server), so streams keep being served meanwhile. Between scrapes nothing runs, except
with the Redis broker (``shared_metrics.py``): there each process renders its metrics and
writes them to Redis every ``metrics_snapshot_seconds`` (0.3 ms and one round trip), and a
scrape adds two round trips (write this process's, read the others') and parsing every
snapshot, about 1.3 ms per process (each is about 7 KB). Scraped every 15 s, that is well under
0.1% of one core, against the 5% of throughput the scrape may cost.

Jobs by state come from the store, not from memory: with queue workers, jobs run in processes
this server never sees, and finished jobs outlive every process; only the store knows them all.
That gauge describes the whole deployment, so it carries no ``process`` label.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jobcast._prometheus import Families
from jobcast.errors import JobcastError
from jobcast.jobs.metrics import JobsCollector
from jobcast.jobs.model import JobState
from jobcast.subscription import CloseReason

if TYPE_CHECKING:
    from jobcast.hub import Hub
    from jobcast.jobs.runner import EmbeddedRunner
    from jobcast.shared_metrics import SharedMetrics
    from jobcast.stores.base import JobStore

logger = logging.getLogger("jobcast.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TRANSPORTS = ("sse", "websocket")
BROKER_OPERATIONS = ("publish", "replay")


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily,
    counts: dict[str, int],
    always: Iterable[str] = (),
) -> CounterMetricFamily | GaugeMetricFamily:
    """``family`` with one sample per key; the ``always`` keys appear from the start, at 0."""
    for key in sorted({*always, *counts}):
        family.add_metric([key], counts.get(key, 0))
    return family


class HubCollector(Collector):
    def __init__(self, hub: "Callable[[], Hub | None]", metrics: "Metrics") -> None:
        self.hub = hub
        #: The process's own counters (open WebSockets, request timeouts).
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        hub = self.hub()
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
        yield _labelled(resets, stats.resets)
        dropped = CounterMetricFamily(
            "jobcast_events_dropped",
            "Pending events discarded when a stream ended, by why it ended (slow_consumer: "
            "evicted; stuck: a write timed out; draining; client: it went away; expired: its "
            "credential; time_limit). A client that resumes replays them from history.",
            labels=["reason"],
        )
        yield _labelled(dropped, stats.dropped, (reason.value for reason in CloseReason))
        broker_errors = CounterMetricFamily(
            "jobcast_broker_errors",
            "Broker failures (Unavailable) seen by publishes and replays, by operation.",
            labels=["operation"],
        )
        yield _labelled(broker_errors, stats.broker_errors, BROKER_OPERATIONS)
        subscriptions = hub.subscriptions()
        yield GaugeMetricFamily(
            "jobcast_subscriptions", "Open subscriptions.", value=len(subscriptions)
        )
        sse = sum(1 for s in subscriptions if s.transport == "sse")
        connections = GaugeMetricFamily(
            "jobcast_connections",
            "Open streaming connections by transport: SSE streams and WebSocket sockets (a "
            "/ws/events socket counts once, however many topics it subscribed).",
            labels=["transport"],
        )
        yield _labelled(connections, {"sse": sse, "websocket": self.metrics.websockets})
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
        timeouts = CounterMetricFamily(
            "jobcast_request_timeouts",
            "Connections closed because a request's head (or its body's first byte) did not "
            "arrive in time, by phase: idle (nothing sent), headers, body (request_heads.R2).",
            labels=["phase"],
        )
        yield _labelled(timeouts, self.metrics.request_timeouts, ("idle", "headers", "body"))


class Metrics:
    """The registry of one :class:`Runtime` (no process-global registry: apps stay separate)."""

    def __init__(
        self,
        *,
        hub: "Callable[[], Hub | None]",
        store: "Callable[[], JobStore | None]",
        runner: "Callable[[], EmbeddedRunner | None]",
        shared: "Callable[[Callable[[], bytes]], SharedMetrics | None]",
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub, self))
        self.registry.register(JobsCollector(store, runner))
        self._store = store
        self._shared = shared
        self.write_latency = Histogram(
            "jobcast_publish_to_write_seconds",
            "From an event's commit to its first write to a stream.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        #: Open WebSocket connections (SSE streams are counted from the hub's subscriptions).
        self.websockets = 0
        #: Connections closed at the request head deadline, by phase (``request_heads``).
        self.request_timeouts: dict[str, int] = {}
        #: With the Redis broker: every process's snapshot, shared through Redis.
        self.shared: SharedMetrics | None = None

    def observe_write(self, committed_at: float) -> None:
        self.write_latency.observe(max(0.0, time.time() - committed_at))

    def count_request_timeout(self, phase: str) -> None:
        self.request_timeouts[phase] = self.request_timeouts.get(phase, 0) + 1

    @contextlib.contextmanager
    def websocket(self) -> Iterator[None]:
        """Count a WebSocket connection while the block runs."""
        self.websockets += 1
        try:
            yield
        finally:
            self.websockets -= 1

    async def start(self) -> None:
        """With other processes in the deployment, start sharing this one's metrics."""
        self.shared = self._shared(self.own)
        if self.shared is not None:
            self.shared.start()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
            self.shared = None

    def own(self) -> bytes:
        """This process's metrics (the deployment-wide job gauge is not among them)."""
        return generate_latest(self.registry)

    async def render(self) -> bytes:
        """What ``/metrics`` answers: every process's metrics, then the jobs by state."""
        own = self.own()
        if self.shared is not None:
            own = await self.shared.gather(own)
        return own + await self._jobs_by_state()

    async def _jobs_by_state(self) -> bytes:
        store = self._store()
        if store is None:
            return b""
        try:
            counts = await store.count_by_state()
        except JobcastError as exc:  # counted as a store error; the rest is still worth having
            logger.warning("metrics: cannot count jobs by state: %s", exc)
            return b""
        jobs = GaugeMetricFamily(
            "jobcast_jobs",
            "Jobs in the job store by state (the whole deployment: not per process).",
            labels=["state"],
        )
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Families([jobs]))
        return generate_latest(registry)
