"""What a replay reads from the Redis broker's history (``redis.py``, X3).

Exact topics read their own stream ``t:{topic}``; wildcard patterns read the global stream
``log``, filtered. The marks retention left are read after the events, so a trim that runs
between the reads is seen (a ``trimmed`` reset, never a silent gap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from jobcast.events import Event, EventId
from jobcast.topics import TopicPattern

READ_BATCH = 1000  # entries per XRANGE / XREAD call

Entry = dict[bytes, bytes]  # a stream entry's fields: e(poch), t(opic), (t)y(pe), d(ata), s(tamp)


def position(stream_id: bytes) -> int:
    """The event position of a stream id ``{position}-0`` (X1)."""
    return int(stream_id.split(b"-", 1)[0])


def event(epoch: str, stream_id: bytes, topic: str, fields: Entry) -> Event:
    data, ts = fields[b"d"], float(fields[b"s"])
    return Event(epoch, position(stream_id), topic, fields[b"y"].decode(), data, ts)


class HistoryReader:
    """Reads events and retention marks for one broker (its connection, keys and epoch)."""

    def __init__(self, redis: aioredis.Redis, key: Callable[[str], str]) -> None:
        self._redis = redis
        self._key = key

    async def events(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        head: EventId,
        limit: int,
        budget: float,
    ) -> tuple[list[Event], int]:
        """The events after ``after`` up to ``head``, stopping past ``limit`` or ``budget``,
        and the bytes of data they hold."""
        r, epoch = self._redis, head.epoch
        start, end = f"({after.position}-0", f"{head.position}-0"
        events: list[Event] = []
        size = 0
        if any(p.prefix is not None for p in patterns):  # the global stream, filtered
            while len(events) <= limit and size <= budget:
                chunk = await r.xrange(self._key("log"), start, end, count=READ_BATCH)
                for stream_id, fields in chunk:
                    topic = fields[b"t"].decode()
                    if any(p.matches(topic) for p in patterns):
                        events.append(event(epoch, stream_id, topic, fields))
                        size += len(fields[b"d"])
                if len(chunk) < READ_BATCH:
                    break
                start = f"({chunk[-1][0].decode()}"
        else:
            for topic in [p.text for p in patterns]:
                chunk = await r.xrange(self._key(f"t:{topic}"), start, end, count=limit + 1)
                events += [event(epoch, stream_id, topic, fields) for stream_id, fields in chunk]
                size += sum(len(fields[b"d"]) for _, fields in chunk)
                if len(events) > limit or size > budget:
                    break
            events.sort(key=lambda e: e.position)
        return events, size

    async def trimmed_after(self, patterns: Sequence[TopicPattern], after: EventId) -> bool:
        """Whether retention dropped events after ``after`` on ``patterns``."""
        wild = [p for p in patterns if p.prefix is not None]
        exact = [p.text for p in patterns if p.prefix is None]
        jobs = any(
            (p.prefix is None and p.text.startswith("jobs/"))
            or (p.prefix is not None and (p.prefix == "" or p.prefix.startswith("jobs/")))
            for p in patterns
        )
        others = any(not (p.prefix or p.text).startswith("jobs/") for p in patterns)
        pipe = self._redis.pipeline(transaction=False)  # every watermark in one round trip
        pipe.get(self._key("jobs_expired_through") if jobs else self._key("-"))
        pipe.get(self._key("expired_through") if others else self._key("-"))
        pipe.get(self._key("log_trimmed") if wild else self._key("-"))
        pipe.hmget(self._key("trimmed"), exact or ["-"])
        if wild:
            pipe.hgetall(self._key("trimmed"))
        jobs_mark, others_mark, log_mark, topic_marks, *all_marks = await pipe.execute()
        marks = [jobs_mark, others_mark, log_mark, *topic_marks]
        for topic, mark in (all_marks[0] if all_marks else {}).items():
            if any(p.matches(topic.decode()) for p in wild):
                marks.append(mark)
        return max(int(m or 0) for m in marks) > after.position
