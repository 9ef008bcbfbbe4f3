"""Several processes, one scrape: each process's metrics go to the shared broker's Redis (or
PostgreSQL), and whichever process Prometheus reaches answers for all of them, each series
labelled with its ``process``.
Servers (``server/ops/metrics.py``) and ``jobcast worker`` processes (``jobs/worker.py``) share
theirs alike, so this module depends on neither.

Decisions (cited as M1..M4):

M1. Snapshots in Redis rather than prometheus_client's multiprocess mode. That mode keeps every
    metric in memory-mapped files that each process writes as it counts; jobcast's metrics are
    read from the hub's plain counters at scrape time, which those files cannot hold without a
    write per event or a second copy of every counter. It also needs a directory shared by
    the processes (one machine only) and cleaned at every start. The Redis broker, which
    several processes need anyway, works across machines and needs nothing else; with the
    PostgreSQL broker, its database holds the snapshots instead (``_postgres_snapshots.py``).
M2. Each process writes its rendered metrics (the text format) to ``{prefix}metrics:{process}``
    with a time to live, and adds its name to the set ``{prefix}metrics:processes``, every
    ``metrics_snapshot_seconds`` and at each scrape it answers. A process that stops deletes
    its snapshot; one that dies is forgotten when its snapshot expires (three intervals).
M3. A scrape writes this process's fresh snapshot, reads every other one, and renders them all
    with a ``process`` label (``host:pid``), so the answer has the same series whichever process
    gives it: ``sum without (process) (...)`` is the deployment's total. Other processes'
    numbers are at most one interval old.
M4. When Redis cannot be reached, a scrape still answers with this process's own metrics, and
    ``jobcast_metrics_processes`` says how many processes the answer covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from jobcast._prometheus import Families

logger = logging.getLogger("jobcast.metrics")


def process_name() -> str:
    """``host:pid``: unique among the processes sharing one Redis."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Snapshots(Protocol):
    """Where the processes' snapshots live (M2): the broker's Redis or PostgreSQL."""

    #: What a failed call raises; a scrape then answers with this process alone (M4).
    failures: tuple[type[BaseException], ...]

    async def put(self, process: str, snapshot: bytes, ttl_ms: int) -> None: ...

    async def read_all(self) -> dict[str, bytes]: ...

    async def forget(self, process: str) -> None: ...

    async def close(self) -> None: ...


def open_snapshots(broker_url: str) -> Snapshots:
    """The snapshots beside the broker that ``broker_url`` names (Redis or PostgreSQL)."""
    if broker_url.startswith(("redis://", "rediss://")):
        from jobcast._redis_snapshots import RedisSnapshots  # the 'redis' extra

        return RedisSnapshots(broker_url)
    from jobcast._postgres_snapshots import PostgresSnapshots  # the 'postgres' extra

    return PostgresSnapshots(broker_url)


class SharedMetrics:
    """This process's side of the shared snapshots (M2, M3)."""

    def __init__(self, broker_url: str, interval: float, render: Callable[[], bytes]) -> None:
        self.interval = interval
        self.render = render
        self.process = process_name()
        self.ttl_ms = max(1000, int(3 * interval * 1000))
        self._snapshots = open_snapshots(broker_url)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish_forever(), name="jobcast-metrics")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*self._snapshots.failures):  # M2: leave no stale snapshot
            await self._snapshots.forget(self.process)
        await self._snapshots.close()

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self.publish(self.render())
            except self._snapshots.failures as exc:
                self._failed(exc)
            else:
                self._failing = False
            await asyncio.sleep(self.interval)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:  # once per outage, not once per interval
            logger.warning("metrics: cannot share this process's metrics: %s", exc)
        self._failing = True

    async def publish(self, snapshot: bytes) -> None:
        await self._snapshots.put(self.process, snapshot, self.ttl_ms)

    async def gather(self, own: bytes) -> bytes:
        """Every process's metrics, this one's ``own`` among them, labelled (M3, M4)."""
        snapshots: dict[str, bytes] = {}
        try:
            await self.publish(own)
            snapshots = await self._snapshots.read_all()
        except self._snapshots.failures as exc:
            self._failed(exc)
        snapshots[self.process] = own
        return merge(snapshots)


def merge(snapshots: dict[str, bytes]) -> bytes:
    """Render several processes' metrics as one, each sample labelled with its process."""
    families: dict[str, Metric] = {}
    included = 0
    for process, snapshot in sorted(snapshots.items()):
        try:
            parsed = list(text_string_to_metric_families(snapshot.decode()))
        except (ValueError, UnicodeDecodeError):  # written by something else: leave it out
            logger.warning("metrics: the snapshot of process %s cannot be parsed", process)
            continue
        included += 1
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "process": process})
                for sample in family.samples
            )
    count = GaugeMetricFamily(
        "jobcast_metrics_processes",
        "Processes whose metrics this answer includes (with a shared broker, every live one).",
        value=included,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families([*families.values(), count]))
    return generate_latest(registry)
