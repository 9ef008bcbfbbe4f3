"""The Redis backend of output streams: every instance of a deployment serves every stream.

Each write is one Lua script (``_redis_scripts.py``): its checks (expired? closed? producer
epoch and seq? ``Stream-Seq``? size?) and effects (bytes, producer state, metadata) are
atomic, so an idempotent producer's retry on any instance is a duplicate, never a second copy.
JSON framing happens here before the script; the script reports a refused body only after the
closed check (the protocol's precedence).

Decisions (cited as E1..E3):

E1. The instance that wrote wakes its own live readers with the change itself (store.W1: the
    bytes it appended, where they start, the stream's new tail), as SQLite and PostgreSQL
    do: a reader that stood where they start takes them without reading Redis back. That
    holds for HTTP appends (``append``) and jobs' flushes (``append_stored``) alike.
E2. The script also publishes a wake message on a channel every instance listens to: the
    writer's instance id (random, per store), a NUL, then the path. An instance skips its
    own messages (E1 woke its readers already) and wakes its readers of the path for any
    other instance's, with no change: they read the stream themselves. A reader never
    depends on the channel past a wake-up, since it reads the stream itself.
E3. Rolling upgrades: an instance of an earlier release publishes the bare path. A path
    never holds a control character (the HTTP layer refuses them), so a message with no
    NUL is that older form and wakes the path's readers here as any other instance's
    message does. An older instance reads a newer one's message as a path nobody follows:
    while both run side by side, its live readers are not woken by the newer instances'
    writes, and see them at their next read (a long-poll's timeout, an SSE connection's
    end at ``stream_sse_seconds``), late but never lost. Upgrade every instance to end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub

from jobcast._lua import Script
from jobcast.errors import JobcastError
from jobcast.outputs import _redis_scripts as lua
from jobcast.outputs.model import (
    READ_BUDGET,
    Appended,
    Producer,
    ReadResult,
    StreamError,
    StreamInfo,
    bad_request,
    closed_conflict,
    conflict,
    format_offset,
    found_again,
    is_json,
    json_messages,
    media_type,
    new_epoch_seq,
    not_found,
    seq_conflict,
    sequence_gap,
    stale_epoch,
    too_large,
)
from jobcast.outputs.store import Change, Wakeups

logger = logging.getLogger("jobcast.outputs")
Arg = bytes | str | int | float


class RedisStreamStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        max_stream_bytes: int,
        sweep_interval: float = 60.0,
    ) -> None:
        self.prefix = prefix
        self.max_stream_bytes = max_stream_bytes
        self.wakeups = Wakeups()
        self._redis = self.client = client
        self._create = Script(client, lua.CREATE)
        self._append = Script(client, lua.APPEND)
        self._load = Script(client, lua.LOAD)
        self._delete = Script(client, lua.DELETE)
        self._listener: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.sweep_interval = sweep_interval
        self._channel = f"{prefix}ds:wake"
        #: This store's id in its wake messages, and the messages' prefix (E2).
        self.instance = uuid.uuid4().hex[:12]
        self._signed = f"{self.instance}\0"

    async def open(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)  # before any write: no wake-up is missed
        self._listener = asyncio.create_task(self._listen(pubsub), name="jobcast-stream-wakeups")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="jobcast-stream-sweep")

    async def sweep(self) -> None:
        """Remove every expired stream (the load script removes one it finds expired)."""
        now = time.time()
        async for path in self._redis.zscan_iter(f"{self.prefix}ds:paths"):
            name = path[0].decode() if isinstance(path, tuple) else path.decode()
            await self._load(keys=[self._meta(name)], args=[self.prefix, name, now, 0])

    async def _sweep_forever(self) -> None:
        """Expired streams nobody touches again are removed by this pass (as on SQLite)."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except (redis.RedisError, OSError) as exc:
                logger.warning("sweeping expired streams failed: %s", exc)

    async def close(self) -> None:
        """Stop listening (the client, and its pool, stay the caller's to close)."""
        for task in (self._listener, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listener = self._sweeper = None

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
        data = json_messages(body, allow_empty=True) if body and is_json(content_type) else body
        if len(data) > self.max_stream_bytes:
            raise too_large(len(data), self.max_stream_bytes)
        args: list[Arg] = [self.prefix, path, content_type, _text(ttl), _text(expires_at)]
        args += [int(closed), data, time.time(), self._signed + path]
        result = await self._create(keys=[self._meta(path)], args=args)
        if result[0] == b"created":
            self.wakeups.notify(path)
            return await self.head(path), True
        return found_again(await self.head(path), content_type, ttl, expires_at, closed)

    def append_now(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended | None:
        """Never at once: every append is a round trip to Redis."""
        return None

    async def append(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended:
        info = await self._info(path, touch=False)
        data, refusal = body, ""
        if body and content_type and media_type(content_type) != media_type(info.content_type):
            refusal = f"conflict:the stream's content type is {info.content_type}"
        if body and not refusal and is_json(info.content_type):
            try:
                data = json_messages(body, allow_empty=False)
            except StreamError as exc:
                refusal = f"bad_request:{exc}"
        result = await self._run_append(path, data, refusal, seq, producer, close, stored=False)
        status = result[0].decode()
        if status == "ok":
            info.tail, info.closed = int(result[2]), result[3] == b"1"
            self.wakeups.notify(path, _change(result, data))  # E1
            return Appended(info, producer_seq=producer.seq if producer else None)
        if status == "duplicate":
            info.tail, info.closed = int(result[2]), result[4] == b"1"
            last = int(result[3]) if result[3] else None
            return Appended(info, fresh=False, producer_seq=last)
        raise self._refusal(path, status, result, seq)

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        for path, data, close in writes:
            result = await self._run_append(path, data, "", None, None, close, stored=True)
            if result[0] == b"ok":
                self.wakeups.notify(path, _change(result, data))  # E1
            elif result[0] == b"toolarge":
                raise self._refusal(path, "toolarge", result, None)

    async def head(self, path: str) -> StreamInfo:
        return await self._info(path, touch=False)

    async def read(
        self, path: str, incarnation: int | None, position: int | None, *, touch: bool = True
    ) -> ReadResult:
        info = await self._info(path, touch=touch)
        if incarnation is not None and incarnation != info.incarnation:
            if incarnation < info.incarnation:  # model.O2
                raise StreamError(410, "gone", "the data at this offset was removed")
            raise bad_request("the offset names no data of this stream")
        if position is None:
            position = info.tail
        if position > info.tail:
            raise bad_request("the offset is beyond the end of the stream")
        parts: list[bytes] = []
        end = position
        if position < info.tail:
            starts_key = f"{self.prefix}ds:z:{info.incarnation}"
            first: list[bytes] = await self._redis.zrevrangebyscore(
                starts_key, position, "-inf", 0, 1
            )
            starts: list[bytes] = await self._redis.zrangebyscore(
                starts_key, int(first[0]) if first else 0, info.tail - 1, 0, 256
            )
            chunks: list[bytes | None] = await self._redis.hmget(  # type: ignore[misc]
                f"{self.prefix}ds:d:{info.incarnation}", starts
            )
            size = 0
            for start_text, data in zip(starts, chunks, strict=True):
                start = int(start_text)
                if data is None or (parts and size + len(data) > READ_BUDGET):
                    break
                piece = data[position - start :] if not parts else data
                parts.append(piece)
                size += len(piece)
                end = start + len(data)
        return ReadResult(info, position, b"".join(parts), end, end == info.tail)

    async def delete(self, path: str) -> None:
        args: list[Arg] = [self.prefix, path, time.time(), self._signed + path]
        deleted = await self._delete(keys=[self._meta(path)], args=args)
        if not deleted:
            raise not_found(path)
        self.wakeups.notify(path)

    async def listing(self, prefix: str) -> list[StreamInfo]:
        paths = await self._redis.zrangebylex(
            f"{self.prefix}ds:paths", b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"
        )
        found = []
        for path in paths:
            with contextlib.suppress(StreamError):
                found.append(await self._info(path.decode(), touch=False))
        return found

    # -- helpers ----------------------------------------------------------------------------

    def _meta(self, path: str) -> str:
        return f"{self.prefix}ds:m:{path}"

    async def _info(self, path: str, *, touch: bool) -> StreamInfo:
        raw = await self._load(
            keys=[self._meta(path)], args=[self.prefix, path, time.time(), int(touch)]
        )
        if not raw:
            raise not_found(path)
        fields = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
        closer = None
        if fields["closed_by"]:
            producer_id, epoch, seq = fields["closed_by"].rsplit(" ", 2)
            closer = Producer(producer_id, int(epoch), int(seq))
        return StreamInfo(
            incarnation=int(fields["incarnation"]),
            path=path,
            content_type=fields["content_type"],
            ttl=int(fields["ttl"]) if fields["ttl"] else None,
            expires_at=float(fields["expires_at"]) if fields["expires_at"] else None,
            closed=fields["closed"] == "1",
            tail=int(fields["tail"]),
            last_seq=fields["last_seq"] or None,
            closed_by=closer,
            accessed_at=float(fields["accessed_at"]),
        )

    async def _run_append(
        self,
        path: str,
        data: bytes,
        refusal: str,
        seq: str | None,
        producer: Producer | None,
        close: bool,
        *,
        stored: bool,
    ) -> list[Any]:
        args: list[Arg] = [self.prefix, path, time.time(), data, refusal, seq or ""]
        if producer is None:
            args += ["", 0, 0]
        else:
            args += [producer.id, producer.epoch, producer.seq]
        args += [int(close), self.max_stream_bytes, int(stored), self._signed + path]
        result: list[Any] = await self._append(keys=[self._meta(path)], args=args)
        return result

    def _refusal(self, path: str, status: str, result: list[Any], seq: str | None) -> JobcastError:
        if status == "notfound":
            return not_found(path)
        if status == "closed":
            return closed_conflict(format_offset(int(result[1]), int(result[2])))
        if status == "refused":
            kind, _, message = result[1].decode().partition(":")
            return conflict(message) if kind == "conflict" else bad_request(message)
        if status == "gap":
            return sequence_gap(int(result[1]), int(result[2]))
        if status == "newepoch":
            return new_epoch_seq()
        if status == "stale":
            return stale_epoch(int(result[1]))
        if status == "seq":
            return seq_conflict(seq or "", result[1].decode())
        return too_large(int(result[1]), self.max_stream_bytes)

    async def _listen(self, pubsub: PubSub) -> None:
        """Wake this instance's readers of every path any instance wrote."""
        while True:
            try:
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is not None:
                        self._woken(message["data"])
            except (redis.RedisError, OSError) as exc:
                logger.warning("stream wake-ups from Redis interrupted (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                pubsub = self._redis.pubsub()
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.subscribe(self._channel)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise

    def _woken(self, data: bytes) -> None:
        """A wake message: another instance's (E2) or an older release's bare path (E3)."""
        sender, signed, path = data.decode().rpartition("\0")
        if not signed or sender != self.instance:
            self.wakeups.notify(path)


def _change(result: list[Any], data: bytes) -> Change:
    """What an ``ok`` append script stored (E1): ``ok``, incarnation, new tail, closed."""
    tail = int(result[2])
    return Change(int(result[1]), tail - len(data), data, tail, result[3] == b"1")


def _text(value: float | None) -> str:
    return "" if value is None else repr(value)
