"""The direct path's output streams: a task's streams written into the deployment's Redis,
where every server serves them, by the idempotent producers of ``_stream_writer.py``.

Decisions (cited as S1..S3):

S1. The store is the broker's Redis under the broker's key prefix, as ``jobcast worker``
    writes it (``jobs/worker.py``), so the servers find the streams. It is never ``open``ed:
    a worker only writes, so it needs neither the wake-up channel nor the sweep of expired
    streams (the servers run both).
S2. Appends go through the store's ``append`` with the writer's producer, as the HTTP route
    does, not its ``append_stored``: a script whose answer was lost with its connection ran
    or did not, and only the producer's seq makes sending it again safe
    (``_stream_writer.T2``).
S3. What a retry may fix is Redis' own errors and ``Unavailable``; any other refusal (the
    stream closed or deleted, past the store's size limit) is final. A create that finds
    the stream (an earlier attempt made it, or it is closed) is not an error.
"""

from __future__ import annotations

import redis.asyncio as redis

from jobcast.brokers.redis_urls import split_url
from jobcast.errors import JobcastError
from jobcast.integrations._stream_writer import Refused, Retry
from jobcast.outputs.model import Producer, StreamError
from jobcast.outputs.redis import RedisStreamStore


def open_worker_streams(broker_url: str, max_stream_bytes: int) -> RedisStreamStore:
    """The streams of the deployment whose Redis broker is ``broker_url`` (S1)."""
    redis_url, prefix, _ = split_url(broker_url)
    client = redis.Redis.from_url(redis_url)
    return RedisStreamStore(client, prefix, max_stream_bytes=max_stream_bytes)


class StoreSink:
    """Output streams straight into the stream store (``_stream_writer.Sink``, S2, S3)."""

    def __init__(self, store: RedisStreamStore) -> None:
        self.store = store

    async def create(self, path: str, content_type: str) -> None:
        try:
            await self.store.create(
                path, content_type, ttl=None, expires_at=None, closed=False, body=b""
            )
        except StreamError as exc:
            if exc.status_code != 409:  # 409: a stream is there already (S3)
                raise Refused(str(exc)) from exc
        except (redis.RedisError, OSError, JobcastError) as exc:
            raise _translated(exc) from exc

    async def append(
        self, path: str, body: bytes, content_type: str, producer: Producer, close: bool
    ) -> None:
        try:
            await self.store.append(
                path,
                body,
                content_type=content_type if body else None,
                producer=producer,
                close=close,
            )
        except (redis.RedisError, OSError, JobcastError) as exc:
            raise _translated(exc) from exc

    async def open_streams(self, job_id: str) -> list[str]:
        try:
            found = await self.store.listing(f"jobs/{job_id}/")
        except (redis.RedisError, OSError, JobcastError) as exc:
            raise _translated(exc) from exc
        return [info.path for info in found if not info.closed]

    async def close_stream(self, path: str) -> None:
        try:
            await self.store.append(path, b"", content_type=None, close=True)
        except StreamError as exc:
            if exc.status_code != 409:  # 409: closed meanwhile
                raise Refused(str(exc)) from exc
        except (redis.RedisError, OSError, JobcastError) as exc:
            raise _translated(exc) from exc

    async def close(self) -> None:
        await self.store.client.aclose()


def _translated(exc: BaseException) -> Exception:
    """Worth a retry (Redis' errors, ``Unavailable``) or final (S3)."""
    if isinstance(exc, JobcastError) and exc.status_code != 503:
        return Refused(str(exc))
    return Retry(repr(exc))
