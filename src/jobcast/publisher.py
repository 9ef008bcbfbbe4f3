"""Publish events from processes that are not jobcast: a Celery task, a cron script, a service.

::

    from jobcast.publisher import Publisher

    with Publisher("redis://127.0.0.1:6379/0") as publisher:
        publisher.publish("videos/42", "video.status", {"status": "PROCESSING", "progress": 40})

``AsyncPublisher`` is the asyncio twin (``await publisher.publish(...)``). Both write straight
into the shared Redis or PostgreSQL broker (``postgresql://...``; by default the broker the
``JOBCAST_*`` settings name, a PostgreSQL store's database included), so every jobcast
instance delivers the event, with an id, to its subscribers and keeps it in the history for
``Last-Event-ID`` replay. Retention follows the same ``JOBCAST_HISTORY_*`` settings as the
servers. A process that cannot reach the broker can use the HTTP endpoint instead
(``POST /api/events`` with a ``service`` token).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from jobcast.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from jobcast.brokers.postgres import PostgresBroker
    from jobcast.brokers.redis import RedisBroker
    from jobcast.events import EventDraft

__all__ = ["AsyncPublisher", "Publisher"]

T = TypeVar("T")


class AsyncPublisher:
    """Publishes to a Redis or PostgreSQL broker from asyncio code; ``await close()`` (or
    ``async with``)."""

    def __init__(self, broker_url: str | None = None) -> None:
        from jobcast.brokers import POSTGRES_SCHEMES
        from jobcast.config import Settings

        settings = Settings()
        url = broker_url or settings.resolved_broker_url
        scheme = urlsplit(url).scheme
        self._broker: RedisBroker | PostgresBroker
        if scheme.startswith("redis"):  # redis://, rediss://, redis+sentinel://
            from jobcast.brokers.redis import RedisBroker

            self._broker = RedisBroker(url, settings.retention())
        elif scheme in POSTGRES_SCHEMES:
            from jobcast.brokers.postgres import PostgresBroker

            self._broker = PostgresBroker(url, settings.retention())
        else:
            raise InvalidInput(
                "the publisher writes to a shared broker (redis://host:port/db or "
                "postgresql://user@host/db); with the embedded default, publish over HTTP: "
                "POST /api/events"
            )
        self._max_event_bytes = settings.max_event_bytes
        self._connected = False

    async def publish(self, topic: str, type: str, data: Any = None) -> str:
        """Publish one event; returns its id once the broker has stored it (else raises
        :class:`~jobcast.errors.Unavailable`: never acknowledged and lost)."""
        (event_id,) = await self.publish_many([(topic, type, data)])
        return event_id

    async def publish_many(self, events: Sequence[tuple[str, str, Any]]) -> list[str]:
        """Publish several events atomically, in order; returns their ids."""
        drafts = self._drafts(events)
        await self._connect()
        return [event.id for event in await self._broker.publish(drafts)]

    async def publish_in(self, connection: Any, topic: str, type: str, data: Any = None) -> None:
        """Publish one event in the caller's own PostgreSQL transaction (``connection``: an
        asyncpg connection, or a SQLAlchemy ``AsyncConnection`` or ``AsyncSession``, on the
        broker's database). The event exists iff that transaction commits; the instances
        deliver it after the commit. The PostgreSQL broker only."""
        drafts = self._drafts([(topic, type, data)])
        publish_in = getattr(self._broker, "publish_in", None)  # brokers/postgres.G6
        if publish_in is None:
            raise InvalidInput("publish_in needs the PostgreSQL broker (postgresql://...)")
        await self._connect()  # its tables exist before the caller's transaction uses them
        await publish_in(connection, drafts)

    def _drafts(self, events: Sequence[tuple[str, str, Any]]) -> list[EventDraft]:
        from jobcast.events import EventDraft

        drafts = [EventDraft.create(topic, type_, data) for topic, type_, data in events]
        for draft in drafts:
            if len(draft.data_json) > self._max_event_bytes:
                raise PayloadTooLarge(f"event data is over {self._max_event_bytes} bytes")
        return drafts

    async def _connect(self) -> None:
        if not self._connected:
            await self._broker.connect()
            self._connected = True

    async def close(self) -> None:
        await self._broker.close()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Publisher:
    """The blocking twin, for sync code (Celery, RQ, scripts): one private event loop thread.

    Thread-safe: several threads may publish through one instance.
    """

    def __init__(self, broker_url: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobcast-publisher", daemon=True
        )
        self._thread.start()
        try:
            self._async = self._run(_create(broker_url))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def publish(self, topic: str, type: str, data: Any = None) -> str:
        """Publish one event and return its id (see :meth:`AsyncPublisher.publish`)."""
        return self._run(self._async.publish(topic, type, data))

    def publish_many(self, events: Sequence[tuple[str, str, Any]]) -> list[str]:
        return self._run(self._async.publish_many(events))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.close())
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _create(broker_url: str | None) -> AsyncPublisher:
    return AsyncPublisher(broker_url)  # created on the loop that will use its connections
