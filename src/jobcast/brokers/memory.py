"""In-process broker with history in memory: for tests and throwaway instances (``memory://``)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence

from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern


class MemoryBroker:
    shared = False  # one process: nothing to announce, no history lost while running

    def __init__(self, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.epoch = new_epoch()
        self.retention = retention
        self._trim_interval = trim_interval
        self._position = 0
        self._history: dict[str, deque[Event]] = {}
        #: Per topic, the newest position that retention dropped.
        self._trimmed: dict[str, int] = {}
        #: Newest position of any topic that expired entirely (applies to every topic).
        self._expired_through = 0
        self._deliver: Deliver | None = None
        self._trimmer: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver, history_lost: Callable[[], None] | None = None) -> None:
        self._deliver = deliver
        self._trimmer = asyncio.create_task(self._trim_forever())

    async def close(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        return self.publish_now(drafts)

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._deliver is None:
            raise RuntimeError("broker not started")
        events = []
        limit = self.retention.max_events_per_topic
        for draft in drafts:
            self._position += 1
            event = Event(self.epoch, self._position, draft.topic, draft.type, draft.data_json)
            history = self._history.get(draft.topic)
            if history is None:
                history = self._history[draft.topic] = deque()
            history.append(event)
            if len(history) > limit:
                self._trimmed[draft.topic] = history.popleft().position
            events.append(event)
        self._deliver(events)
        return events

    @property
    def head(self) -> EventId:
        return EventId(self.epoch, self._position)

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        head = self.head
        gap = check_position(self.epoch, self._position, after)
        if gap is not None:
            return Replay([], head, gap)
        topics = {
            topic
            for pattern in patterns
            for topic in (
                [t for t in (*self._history, *self._trimmed) if pattern.matches(t)]
                if pattern.is_wildcard
                else [pattern.text]
            )
        }
        trimmed = max([self._expired_through, *(self._trimmed.get(t, 0) for t in topics)])
        if trimmed > after.position:
            return Replay([], head, Gap.TRIMMED)
        streams = [
            [e for e in self._history.get(topic, ()) if e.position > after.position]
            for topic in topics
        ]
        events = list(heapq.merge(*streams, key=lambda e: e.position))
        if len(events) > limit or (
            max_bytes is not None and sum(len(e.data_json) for e in events) > max_bytes
        ):
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        return Replay(events, head)

    def trim_expired(self) -> None:
        cutoff = time.time() - self.retention.max_age_seconds
        for topic in list(self._history):
            history = self._history[topic]
            while history and history[0].ts < cutoff:
                self._trimmed[topic] = history.popleft().position
            if not history:
                del self._history[topic]
                self._expired_through = max(self._expired_through, self._trimmed.pop(topic))
        for topic in [t for t, p in self._trimmed.items() if p <= self._expired_through]:
            del self._trimmed[topic]

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            self.trim_expired()
