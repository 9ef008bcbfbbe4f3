"""Prometheus plumbing that the server's ``/metrics`` and the shared snapshots of several
processes (``shared_metrics.py``) both render through, kept apart from either: the snapshots
need Redis, an optional extra, and the server answers without it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class Families(Collector):
    """Metric families computed before the scrape (an async query, other processes' numbers)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families
