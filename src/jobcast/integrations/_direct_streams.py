"""The direct path's output streams: a task's ``stream(...)`` written into the deployment's Redis,
where every server serves them, by the same buffered writers a native job has.

Decisions (cited as S1..S4):

S1. A task's streams are ``outputs/job_output.py``'s :class:`JobOutputs` on the reporter's
    loop: ``write`` is the native one (framed, counted against ``JOBCAST_MAX_STREAM_BYTES``,
    batched into one commit per flush, never reordered, retried while the store is
    unavailable). The store is the broker's Redis under the broker's key prefix, as
    ``jobcast worker`` writes it (``jobs/worker.py``), so the servers find the streams.
S2. Redis' own errors become :class:`~jobcast.errors.Unavailable` here, at the seam, so the
    writers keep the bytes and retry (``job_output.J4``) instead of losing a flush.
S3. When the task ends (success, failure, revoke) its streams are closed before the terminal
    report, so a watcher that sees the end finds them closed (``job_output.J3``). The wait
    for the last flush is bounded by the reporter's exit wait; then the terminal report goes
    on and the bytes still pending are retried in the background. Streams of the job that
    another process opened (an earlier attempt, a pool child a revoke terminated) are found
    by their path and closed too.
S4. A retried task's streams are flushed, not closed: the next attempt, here or in another
    process, appends to the same streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import redis.asyncio as redis

from jobcast.brokers.redis_urls import split_url
from jobcast.errors import JobcastError, Unavailable
from jobcast.outputs.job_output import JobOutputs
from jobcast.outputs.model import StreamInfo
from jobcast.outputs.redis import RedisStreamStore

logger = logging.getLogger("jobcast.integrations")


class WorkerStreamStore(RedisStreamStore):
    """The Redis stream store as a worker writes it: Redis' errors translated (S2).

    Never ``open``ed: a worker only writes, so it needs neither the wake-up channel nor the
    sweep of expired streams (the servers run both)."""

    async def create(
        self,
        path: str,
        content_type: str,
        *,
        ttl: int | None,
        expires_at: float | None,
        closed: bool,
        body: bytes,
    ) -> tuple[StreamInfo, bool]:
        try:
            return await super().create(
                path, content_type, ttl=ttl, expires_at=expires_at, closed=closed, body=body
            )
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"output streams' Redis: {exc}") from exc

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        try:
            await super().append_stored(writes)
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"output streams' Redis: {exc}") from exc


def open_worker_streams(broker_url: str, max_stream_bytes: int) -> WorkerStreamStore:
    """The streams of the deployment whose Redis broker is ``broker_url`` (S1)."""
    redis_url, prefix, _ = split_url(broker_url)
    client = redis.Redis.from_url(redis_url)
    return WorkerStreamStore(client, prefix, max_stream_bytes=max_stream_bytes)


class DirectStreams:
    """The output streams of this process's tasks, on the reporter's loop (S1-S4)."""

    def __init__(self, store: WorkerStreamStore, end_wait: float) -> None:
        self.store = store
        self.end_wait = end_wait
        self._jobs: dict[str, JobOutputs] = {}

    def of(self, job_id: str) -> JobOutputs:
        """The job's streams in this process (made on the loop: ``JobOutputs`` needs it)."""
        outputs = self._jobs.get(job_id)
        if outputs is None:
            outputs = self._jobs[job_id] = JobOutputs(self.store, job_id)
        return outputs

    async def retrying(self, job_id: str) -> None:  # S4
        outputs = self._jobs.pop(job_id, None)
        if outputs is not None:
            await self._bounded(job_id, outputs.flush())

    async def end(self, job_id: str) -> None:  # S3
        outputs = self._jobs.pop(job_id, None)
        mine: set[str] = set()
        if outputs is not None:
            mine = {stream.path for stream in outputs.streams.values()}
            await self._bounded(job_id, outputs.close_all())
        try:
            found = await self.store.listing(f"jobs/{job_id}/")
            for info in found:
                # Ours close with their last bytes, even when that takes longer than the wait.
                if not info.closed and info.path not in mine:
                    await self.store.append(info.path, b"", content_type=None, close=True)
        except (JobcastError, redis.RedisError, OSError) as exc:
            logger.warning("job %s: its other output streams were not closed: %s", job_id, exc)

    async def _bounded(self, job_id: str, flushing: Coroutine[Any, Any, None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(flushing), self.end_wait)
        except TimeoutError:
            logger.warning(
                "job %s: its output is not stored yet after %g s; still retrying",
                job_id,
                self.end_wait,
            )

    async def close(self) -> None:
        """At process exit: what is pending gets a last bounded wait (``_reporter.P2``). The
        streams of tasks that did not end stay open: another worker may run them again."""
        for job_id in list(self._jobs):
            try:
                await self.retrying(job_id)
            except Exception as exc:  # the reporter's other connections close in any case
                logger.warning("job %s: its output was not flushed at exit: %s", job_id, exc)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.store.client.aclose()
