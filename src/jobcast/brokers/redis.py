"""The scale-out broker: history and fan-out in Redis Streams, shared by every instance.

Decisions (cited as X1..X9):

X1. Order: one Lua script per publish INCRs a global position counter and XADDs each event to
    the global stream ``log`` with the stream id ``{position}-0`` (and to its topic's stream).
    Positions are integers, strictly increasing in stream order, exactly like SQLite's.
X2. Delivery: each instance runs one ``XREAD BLOCK`` loop on ``log`` and hands batches to its hub
    in stream order. Its replay ``head`` is the last position it delivered, so everything above
    the head reaches a subscription registered before the replay (hub.H2). ``publish`` returns
    once this instance delivered its events (read-your-writes for job snapshots), and a replay
    whose id this instance has not delivered yet waits briefly for the loop to catch up, so a
    client moving from a faster instance is not reset. A publish-only process (``connect``,
    no loop) replays up to Redis's own newest position instead: it has nothing to wait for.
X3. History: exact topics replay from their own stream ``t:{topic}`` (cost proportional to the
    topic); wildcard patterns replay from the global stream, filtered. Retention per topic: at
    most ``max_events_per_topic`` (trimmed when publishing), none older than ``max_age_seconds``
    (a periodic script), except job topics, kept until their terminal event plus
    ``job_grace_seconds``. What retention dropped is recorded per topic, as in SQLite, so a
    resume across a trim is a ``trimmed`` reset, never a silent gap. Each trim script records
    and drops in one atomic step, and a replay reads the events before the marks, so a trim
    that runs between the replay's reads is seen (never a gap). A replay reads at most
    ``max_bytes`` of event data (beyond it: ``too_far_behind``). The reads are in
    ``_redis_history.py``.
X4. Epoch: a key created with ``SET NX``. A flushed or restarted-empty Redis loses it; the next
    publish or read notices, a new epoch starts, and this instance ends its streams with a retry
    hint (the ``history_lost`` callback ``start`` was given), so clients resume with their old
    id and get ``history_lost``.
X5. Redis down: ``publish`` and ``replay`` raise :class:`Unavailable` (503), nothing is
    acknowledged unless it is in Redis. The read loop retries with backoff and resumes after
    the last id it delivered; streams stay open meanwhile (heartbeats continue).
X6. Foreign errors stop here: every redis-py error becomes :class:`Unavailable`.
X7. Calls made on behalf of a caller run shielded (``shielded``): redis-py on Python 3.11 can
    swallow a cancellation that arrives mid-command, which would leave the caller's task hung
    (a job's progress pump being stopped, a client going away during a replay).
X8. Failover (``redis+sentinel://``, ``_redis_connect.py``): replication is asynchronous, so a
    promoted replica may lack the newest events, and would hand their positions out again
    under the same epoch. An instance that delivered a position above the new primary's
    counter (checked after every read error and when idle) replaces the epoch, once for all
    instances (a compare-and-set script that also records where the new epoch begins), and
    ends its streams: resuming clients are told ``history_lost``, never given other events
    under ids they saw. ``?wait=N`` (and ``wait_ms``, default 1000) acknowledges a publish
    only once N replicas have it (``WAIT``), else answers 503: the event may then survive or
    not, so a client that retries can see it twice, never lose it silently.
X9. Cluster (``redis+cluster://``): the key prefix becomes one hash tag (``{jobcast}:``), so a
    deployment's keys share one slot: the publish script's counter, log, topic streams and
    marks must change together, which Cluster allows only within a slot: one deployment's
    events are not spread over nodes (a prefix per deployment spreads deployments). A Cluster
    fails over as Sentinel does (X8: the epoch check is the same); scripts are sent whole to
    a node that lacks them (``_redis_connect.Script``); ``?wait`` is refused (its ``WAIT``
    would go to every primary, not to the connection of the publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from jobcast._lua import Script
from jobcast.brokers import _redis_scripts as lua
from jobcast.brokers._redis_connect import client as redis_client
from jobcast.brokers._redis_history import READ_BATCH, HistoryReader, event, position
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.brokers.redis_urls import replication, split_url
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

logger = logging.getLogger("jobcast.brokers.redis")
T = TypeVar("T")

TERMINAL_JOB_TYPES = frozenset({"succeeded", "failed", "cancelled"})
_CATCH_UP_SECONDS = 2.0  # X2: how long a publish or replay waits for this instance's loop


async def shielded(call: Awaitable[T]) -> T:
    """Await a Redis call that the caller's cancellation cannot wedge (X7)."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a cancelled caller no longer wants it: do not warn about it


class RedisBroker:
    shared = True  # instances publish into one history

    def __init__(self, url: str, retention: Retention, *, trim_interval: float = 5.0) -> None:
        redis_url, self.prefix, self.max_log = split_url(url)
        self.retention = retention
        self.epoch = ""
        #: Given by ``start``: called when the history was lost (X4); the hub ends its streams
        #: with a retry hint.
        self.on_history_lost: Callable[[], None] | None = None
        self._redis: aioredis.Redis = redis_client(redis_url, socket_timeout=5)
        self._replicas, self._wait_ms = replication(url)
        #: X9: the key a script is routed by (a Cluster sends it to that key's node; every
        #: key the scripts touch shares its slot).
        self._route = [self._key("position")]
        self._publish = Script(self._redis, lua.PUBLISH)
        self._new_epoch = Script(self._redis, lua.NEW_EPOCH)
        self._trim = Script(self._redis, lua.TRIM)
        self._history = HistoryReader(self._redis, self._key)
        self._trim_interval = trim_interval
        self._deliver: Deliver | None = None
        self._delivered = 0
        self._last_id = b"0-0"
        #: Where a replaced epoch's successor begins in the log (X8); else the log's start.
        self._epoch_from = b"0-0"
        self._caught_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def head(self) -> EventId:
        return EventId(self.epoch, self._delivered)

    def _key(self, name: str) -> str:
        return self.prefix + name

    async def connect(self) -> None:
        """Join (or create) the history without reading it: for publish-only processes."""
        try:
            await shielded(self._adopt_epoch())
        except RedisError as exc:
            raise Unavailable(f"cannot reach the Redis event broker: {exc}") from exc

    async def start(self, deliver: Deliver, history_lost: Callable[[], None] | None = None) -> None:
        await self.connect()
        self._deliver = deliver
        self.on_history_lost = history_lost
        try:  # start at the end: earlier events are history, reached by replay
            last = await self._redis.xrevrange(self._key("log"), count=1)
        except RedisError as exc:
            raise Unavailable(f"cannot reach the Redis event broker: {exc}") from exc
        if last:
            self._last_id = last[0][0]
            self._delivered = position(self._last_id)
        self._tasks = [asyncio.create_task(self._read_forever(), name="jobcast-redis-read")]
        if self.retention.max_age_seconds > 0:
            self._tasks.append(asyncio.create_task(self._trim_forever(), name="jobcast-trim"))

    async def close(self) -> None:
        self._closing = True  # redis-py may turn a cancelled read into a connection error
        for task in self._tasks:
            task.cancel()
        pool = getattr(self._redis, "connection_pool", None)  # a Cluster has one per node
        if pool is not None:
            await pool.disconnect()  # interrupts a blocked XREAD at once
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

    async def _adopt_epoch(self) -> bool:
        """Read (or create) the epoch; True when it differs from the one this broker had."""
        key = self._key("epoch")
        await self._redis.set(key, new_epoch(), nx=True)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.get(self._key("epoch_from"))
            current, begins = await pipe.execute()
        current = (current or b"").decode()
        changed = bool(self.epoch) and current != self.epoch
        self.epoch = current
        if changed:
            self._epoch_from = begins or b"0-0"
        return changed

    async def _check_history(self) -> None:
        """X4, X8: notice a lost history (a new epoch) or a failover that lost events."""
        if await self._adopt_epoch():
            self._history_lost()
            return
        newest = int(await self._redis.get(self._key("position")) or 0)
        if newest >= self._delivered:
            return
        # the primary lacks events this instance delivered: their ids would be handed out again
        seen = self.epoch
        current, begins = await self._new_epoch(
            keys=self._route, args=[self.prefix, seen, new_epoch()]
        )
        self.epoch, self._epoch_from = current.decode(), begins
        logger.warning(
            "the Redis primary lacks events up to position %d (a failover?); new epoch %s",
            self._delivered,
            self.epoch,
        )
        self._history_lost()

    async def _diverged(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await shielded(self._check_history())
        raise Unavailable(
            "the Redis primary lost events in a failover; this publish was not acknowledged"
        )

    def _history_lost(self) -> None:  # X4, X8
        logger.warning("the Redis event history was lost; new epoch %s", self.epoch)
        self._last_id, self._epoch_from = self._epoch_from, b"0-0"
        self._delivered = position(self._last_id)  # the new epoch's events come after it
        self._caught_up.set()
        if self.on_history_lost is not None:
            self.on_history_lost()

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event] | None:
        """Never at once: every publish is a round trip to Redis."""
        return None

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        now = time.time()
        events: list[Event] = []
        for attempt in range(2):
            args: list[str | bytes | float] = [
                self.prefix,
                self.epoch,
                self.retention.max_events_per_topic,
                self.max_log,
                int(self.retention.job_grace_seconds * 1000),
                int(now * 1000),
            ]
            for d in drafts:
                terminal = d.topic.startswith("jobs/") and d.type in TERMINAL_JOB_TYPES
                args += [d.topic, d.type, d.data_json, repr(now), "1" if terminal else "0"]
            delivered_before = self._delivered  # (the read loop may deliver ours before we hear)
            try:
                positions = await shielded(self._store(args))
            except ResponseError as exc:
                if "JOBCAST_EPOCH" not in str(exc) or attempt:
                    raise Unavailable(f"the Redis event broker refused the events: {exc}") from exc
                try:
                    if await shielded(self._adopt_epoch()) and self._deliver is not None:
                        self._history_lost()  # X4: before positions start over in it
                except RedisError as again:
                    raise Unavailable(f"the Redis event broker failed: {again}") from again
                continue
            except RedisError as exc:  # X5, X6
                raise Unavailable(f"the Redis event broker is unavailable: {exc}") from exc
            if self._deliver is not None and int(positions[0]) <= delivered_before:
                await self._diverged()  # X8: a position this instance delivered, handed out again
            events = [
                Event(self.epoch, int(pos), d.topic, d.type, d.data_json, now)
                for pos, d in zip(positions, drafts, strict=True)
            ]
            break
        if self._deliver is not None:  # a publish-only process has no read loop to wait for
            await self._catch_up(events[-1].position)
        return events

    async def _store(self, args: list[str | bytes | float]) -> list[int]:
        """Run the publish script; with ``?wait=N`` (X8) on the same connection as ``WAIT``,
        which counts the replicas that have this connection's writes."""
        if not self._replicas:
            positions: list[int] = await self._publish(keys=self._route, args=args)
            return positions
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._publish(keys=self._route, args=args, client=pipe)
            pipe.execute_command("WAIT", self._replicas, self._wait_ms)
            positions, replicas = await pipe.execute()
        if int(replicas) < self._replicas:
            raise Unavailable(
                f"{replicas} of {self._replicas} Redis replicas confirmed the events in "
                f"{self._wait_ms} ms: not acknowledged (they may still be delivered)"
            )
        return [int(p) for p in positions]

    async def _catch_up(self, position: int) -> None:
        """Wait (bounded) until this instance delivered ``position`` (X2).

        ``asyncio.timeout``, not ``wait_for``: on Python 3.11, ``wait_for`` returns normally
        when its caller is cancelled just as the wait ends, and the cancellation is lost (a
        job's progress pump, stopped at that moment, then never ended, nor did its job)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CATCH_UP_SECONDS):
                while self._delivered < position:
                    self._caught_up.clear()
                    await self._caught_up.wait()

    async def _read_forever(self) -> None:
        backoff = 0.05
        log = self._key("log")
        while not self._closing:
            try:
                reply = await self._redis.xread({log: self._last_id}, count=READ_BATCH, block=1000)
                if not reply:  # idle, or a Redis that will never pass our id (X4, X8)
                    await self._check_history()
                    continue
                self._deliver_entries(reply[0][1])
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:  # X5: retry, resume after the last id
                if self._closing:
                    return
                logger.warning("Redis read failed (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                with contextlib.suppress(RedisError, OSError):
                    await self._check_history()  # X8: a failover may have lost events

    def _deliver_entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        batch = []
        for stream_id, f in entries:
            epoch = f[b"e"].decode()
            if epoch != self.epoch:  # written under another epoch: the history changed (X4)
                self.epoch = epoch
                self._history_lost()
                return
            batch.append(event(epoch, stream_id, f[b"t"].decode(), f))
        self._last_id = entries[-1][0]
        self._delivered = batch[-1].position
        if self._deliver is not None:
            self._deliver(batch)
        self._caught_up.set()

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        head = self.head
        if after.epoch == self.epoch and after.position > self._delivered:
            try:  # published (on another instance), or an id from nowhere?
                newest = int(await shielded(self._redis.get(self._key("position"))) or 0)
            except RedisError as exc:
                raise Unavailable(f"could not read the Redis event history: {exc}") from exc
            if self._deliver is None:  # publish-only: no read loop to wait for, Redis's head
                head = EventId(self.epoch, newest)
            elif after.position <= newest:
                await self._catch_up(after.position)
                head = self.head
        gap = check_position(self.epoch, head.position, after)
        if gap is not None:
            return Replay([], head, gap)
        try:
            return await shielded(self._replay(patterns, after, head, limit, max_bytes))
        except RedisError as exc:
            raise Unavailable(f"could not read the Redis event history: {exc}") from exc

    async def _replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        head: EventId,
        limit: int,
        max_bytes: int | None,
    ) -> Replay:
        budget = max_bytes if max_bytes is not None else float("inf")
        events, size = await self._history.events(patterns, after, head, limit, budget)
        # X3: the marks after the events, so a trim between our reads is seen, never a gap
        if await self._history.trimmed_after(patterns, after):
            return Replay([], head, Gap.TRIMMED)
        if len(events) > limit or size > budget:
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        return Replay(events, head)

    async def trim(self) -> None:
        """Apply age retention and the job-topic grace (X3); any instance may run it."""
        cutoff = time.time() - self.retention.max_age_seconds
        args: list[str | int] = [self.prefix, repr(cutoff), int(time.time() * 1000), 1000]
        while await self._trim(keys=self._route, args=args):
            pass  # a full batch was dropped: there may be more

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            try:
                await self.trim()
            except RedisError as exc:  # retried on the next tick; publishing is unaffected
                logger.warning("Redis retention failed: %s", exc)
