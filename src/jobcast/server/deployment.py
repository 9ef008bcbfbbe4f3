"""What this process is deployed on, decided once: memory, SQLite, or Redis or PostgreSQL shared
with others.

The broker URL decides it. With ``memory://`` or SQLite (the embedded default) one process
holds everything: rate-limit counters and spent tickets live in memory, metrics are this
process's own. With Redis, several instances share one deployment, so the counters and the
spent tickets live in the same Redis (through one connection pool, disconnected when the
runtime stops), and each process shares its metrics snapshot there. With PostgreSQL (given, or
the store's database by default) the counters, spent tickets and metrics snapshots live in
that database (``ops/postgres_state.py``, small pools of their own). With
``queue_url``, jobs run on ``jobcast worker`` processes. No other module asks "is this Redis?".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from limits.aio.storage import MemoryStorage, Storage

from jobcast.brokers import POSTGRES_SCHEMES, open_broker
from jobcast.brokers.base import Broker
from jobcast.config import Settings
from jobcast.hub import Hub
from jobcast.jobs.external import ExternalQueue
from jobcast.jobs.registry import Registry
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.outputs.store import StreamStore
from jobcast.server.ops.shared_state import (
    MemorySpentTickets,
    RedisSpentTickets,
    SpentTickets,
    close_rate_limit_storage,
    redis_rate_limit_storage,
)
from jobcast.stores import JobStore

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool, Redis

    from jobcast.server.ops.postgres_state import PostgresState
    from jobcast.shared_metrics import SharedMetrics

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


class Deployment:
    """Hands each part of a runtime what this deployment needs (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = settings.resolved_broker_url
        #: The broker's Redis, when instances share one: the shared state lives there too.
        self.redis_url = url if url.startswith(REDIS_SCHEMES) else None
        self._pool: ConnectionPool | None = None
        self._redis: Redis | None = None  # on the pool, or a Cluster's client (no one pool)
        if self.redis_url is not None:
            from jobcast.brokers import _redis_connect as connect
            from jobcast.brokers.redis_urls import is_cluster, split_url

            redis_url = split_url(self.redis_url)[0]
            if is_cluster(redis_url):
                self._redis = connect.client(redis_url)
            else:
                import redis.asyncio as redis

                self._pool = connect.pool(redis_url)
                self._redis = redis.Redis(connection_pool=self._pool)
        #: The broker's PostgreSQL, when instances share one: tickets and limits live there.
        self._postgres: PostgresState | None = None
        self._limits: Storage | None = None  # Redis counters (limits' own client on a Cluster)
        if urlsplit(url).scheme in POSTGRES_SCHEMES:
            from jobcast.server.ops.postgres_state import PostgresState  # the 'postgres' extra

            self._postgres = PostgresState(url)

    @property
    def shared(self) -> bool:
        """Whether other instances share this deployment's state."""
        return self.redis_url is not None or self._postgres is not None

    def open_broker(self) -> Broker:
        return open_broker(self.settings.resolved_broker_url, self.settings.retention())

    def open_stream_store(self) -> StreamStore:
        """Output streams: in the deployment's Redis or PostgreSQL when instances share one,
        else a SQLite file next to the event history (in memory with ``memory://``)."""
        settings = self.settings
        if self._postgres is not None:
            from jobcast.outputs.postgres import PostgresStreamStore

            where = self._postgres.location  # beside the broker's tables
            return PostgresStreamStore(where, max_stream_bytes=settings.max_stream_bytes)
        if self.redis_url is not None and self._pool is not None:
            import redis.asyncio as redis

            from jobcast.brokers.redis_urls import split_url
            from jobcast.outputs.redis import RedisStreamStore

            client = redis.Redis(connection_pool=self._pool)
            prefix = split_url(self.redis_url)[1]
            return RedisStreamStore(client, prefix, max_stream_bytes=settings.max_stream_bytes)
        from jobcast.outputs.sqlite import SQLiteStreamStore

        url = settings.resolved_broker_url
        path: Path | str = settings.data_dir / "streams.db"
        if url.startswith("memory://"):
            path = ":memory:"
        return SQLiteStreamStore(path, max_stream_bytes=settings.max_stream_bytes)

    def rate_limit_storage(self) -> Storage:
        if self._postgres is not None:
            from jobcast.server.ops.postgres_state import PostgresRateLimitStorage

            return PostgresRateLimitStorage(self._postgres)
        if self.redis_url is None:
            return MemoryStorage()
        storage = self._limits = redis_rate_limit_storage(self.redis_url, self._pool)
        return storage

    def spent_tickets(self) -> SpentTickets:
        if self._postgres is not None:
            from jobcast.server.ops.postgres_state import PostgresSpentTickets

            return PostgresSpentTickets(self._postgres)
        if self.redis_url is None or self._redis is None:
            return MemorySpentTickets()
        return RedisSpentTickets(self.redis_url, self._redis)

    def shared_metrics(self, own: Callable[[], bytes]) -> SharedMetrics | None:
        """Every process's metrics, shared through the broker's Redis or PostgreSQL (``None``
        when there are no others)."""
        seconds = self.settings.metrics_snapshot_seconds
        if not self.shared or seconds <= 0:
            return None
        from jobcast.shared_metrics import SharedMetrics

        return SharedMetrics(self.settings.resolved_broker_url, seconds, own)

    def make_runner(
        self,
        store: JobStore,
        hub: Hub,
        registry: Registry,
        outputs: StreamStore | None = None,
    ) -> EmbeddedRunner:
        """The embedded runner, or with ``queue_url`` the runner that hands jobs to workers."""
        settings = self.settings
        external = self.external_queues()
        if not settings.queue_url:
            return EmbeddedRunner(
                store, hub, registry, settings.runner_options(), external=external, outputs=outputs
            )
        from jobcast.jobs.worker_queue import QueueRunner  # needs the 'queue' extra

        return QueueRunner(
            store,
            hub,
            registry,
            settings.runner_options(),
            queue_url=settings.queue_url,
            heartbeat=settings.worker_heartbeat_seconds,
            external=external,
            outputs=outputs,
        )

    def external_queues(self) -> dict[str, ExternalQueue]:
        """The task queues whose tasks this deployment tracks as jobs (jobs/external.X1)."""
        from jobcast.integrations.dramatiq_control import DramatiqQueue  # imports no Dramatiq

        queues: dict[str, ExternalQueue] = {"dramatiq": DramatiqQueue()}
        if self.settings.celery_app:
            from jobcast.integrations.celery_control import CeleryQueue  # the 'celery' extra

            queues["celery"] = CeleryQueue.load(
                self.settings.celery_app, terminate=self.settings.celery_terminate
            )
        if self.settings.rq_redis_url:
            from jobcast.integrations.rq_control import RqQueue  # the 'rq' extra

            queues["rq"] = RqQueue(self.settings.rq_redis_url)
        return queues

    async def close(self) -> None:
        if self._limits is not None:
            await close_rate_limit_storage(self._limits)
        if self._pool is not None:
            from jobcast.brokers._redis_connect import close_pool

            await close_pool(self._pool)
        elif self._redis is not None:  # a Cluster's client
            await self._redis.aclose()
        if self._postgres is not None:
            await self._postgres.close()
