"""The one stream writer (server/streams/writer.py) and its pumped sinks, without a server.

A fake framing and a recording sink stand for a stream kind and a carrier; every way a stream
ends is driven through the writer and checked at the sink: what was written, in what order,
with what closing, and that the subscription is handed back exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobcast.events import Event
from jobcast.server.streams.pump import PumpedSink
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import TopicPattern


def event(position: int, event_type: str = "e") -> Event:
    return Event("ep", position, "t/1", event_type, b'{"n":%d}' % position, 1.0)


class Framing:
    """Each event becomes ``"<type><position>"``; a chunk is a list of them."""

    def __init__(self, opening: list[str] | None = None, final_type: str = "end") -> None:
        self._opening = opening or ["open"]
        self.final_type = final_type

    def opening(self) -> tuple[list[str], bool]:
        return list(self._opening), False

    def frames(self, events: list[Event]) -> list[str]:
        return [f"{e.type}{e.position}" for e in events]

    def heartbeat(self) -> list[str]:
        return ["ping"]

    def closing(self, reason: CloseReason) -> list[str]:
        return [f"closing:{reason.value}"]

    def final(self, e: Event) -> bool:
        return e.type == self.final_type


class RecordingSink:
    """Takes every chunk at once unless told to block; records the end."""

    def __init__(self) -> None:
        self.chunks: list[list[str]] = []
        self.block = False
        self.ended: tuple[list[str] | None, CloseReason | None] | None = None
        self.aborted = False

    def write(self, chunk: list[str]) -> bool:
        self.chunks.append(chunk)
        return not self.block

    def end(self, closing: list[str] | None, reason: CloseReason | None, done: Any) -> None:
        self.ended = (closing, reason)
        done()

    def abort(self) -> None:
        self.aborted = True


def make(
    framing: Framing | None = None,
) -> tuple[Subscription, RecordingSink, StreamWriter[list[str]], list[Subscription]]:
    subscription = Subscription((TopicPattern("t/1", None),), max_pending=10)
    sink = RecordingSink()
    released: list[Subscription] = []
    writer = StreamWriter(subscription, framing or Framing(), sink, on_close=released.append)
    return subscription, sink, writer, released


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # let the waiter's done-callbacks run


async def test_a_burst_is_one_chunk_after_the_opening() -> None:
    subscription, sink, writer, _ = make()
    writer.start()
    for position in (1, 2, 3):
        subscription.offer(event(position))
    await settle()
    assert sink.chunks == [["open"], ["e1", "e2", "e3"]]
    assert sink.ended is None


async def test_a_heartbeat_is_written_only_when_nothing_else_is() -> None:
    subscription, sink, writer, _ = make()
    writer.start()
    subscription.request_heartbeat()
    await settle()
    subscription.offer(event(1))
    subscription.request_heartbeat()
    await settle()
    assert sink.chunks == [["open"], ["ping"], ["e1"]]


async def test_the_final_event_ends_the_stream_and_what_follows_it_is_not_written() -> None:
    subscription, sink, writer, released = make()
    writer.start()
    subscription.offer(event(1))
    subscription.offer(event(2, "end"))
    subscription.offer(event(3))
    await settle()
    assert sink.chunks == [["open"], ["e1", "end2"]]
    assert sink.ended == (None, None)
    assert released == [subscription]


@pytest.mark.parametrize(
    "reason",
    [CloseReason.SLOW, CloseReason.DRAIN, CloseReason.EXPIRED, CloseReason.TIME_LIMIT],
)
async def test_a_stream_closed_by_the_server_ends_with_the_framing_s_closing(
    reason: CloseReason,
) -> None:
    subscription, sink, writer, released = make()
    writer.start()
    subscription.close(reason)
    await settle()
    assert sink.ended == ([f"closing:{reason.value}"], reason)
    assert released == [subscription]


async def test_a_client_that_left_gets_no_closing() -> None:
    subscription, sink, writer, released = make()
    writer.start()
    writer.lost()
    writer.lost()  # a second report changes nothing
    assert sink.ended == (None, CloseReason.CLIENT)
    assert subscription.close_reason is CloseReason.CLIENT
    assert released == [subscription]


async def test_a_blocked_sink_is_marked_writing_and_resumes_where_it_stopped() -> None:
    subscription, sink, writer, _ = make()
    sink.block = True
    writer.start()
    assert subscription.writing_since > 0  # the hub's ticker can find it (hub.H6)
    subscription.offer(event(1))
    await settle()
    assert sink.chunks == [["open"]]  # nothing more while the sink holds a chunk
    sink.block = False
    writer.resumed()
    assert subscription.writing_since == 0
    assert sink.chunks == [["open"], ["e1"]]


async def test_a_stuck_write_is_aborted_through_the_hub_s_call() -> None:
    subscription, sink, writer, released = make()
    sink.block = True
    writer.start()
    subscription.abort_write()  # what the hub's ticker does past send_timeout
    assert sink.aborted
    assert sink.ended is not None and sink.ended[1] is CloseReason.STUCK
    assert released == [subscription]


class ListSink(PumpedSink[list[str]]):
    """A pumped sink over an awaitable send, like ASGI's or a WebSocket's."""

    def __init__(self, subscription: Subscription, gate: asyncio.Event) -> None:
        super().__init__(subscription)
        self.gate = gate
        self.sent: list[list[str]] = []
        self.finished: tuple[list[str] | None, CloseReason | None] | None = None

    async def send(self, chunk: list[str]) -> None:
        await self.gate.wait()
        self.sent.append(chunk)

    async def finish(self, closing: list[str] | None, reason: CloseReason | None) -> None:
        self.finished = (closing, reason)


async def test_a_pumped_sink_sends_in_order_then_the_closing() -> None:
    subscription = Subscription((TopicPattern("t/1", None),), max_pending=10)
    gate = asyncio.Event()
    gate.set()
    sink = ListSink(subscription, gate)
    released: list[Subscription] = []
    writer = StreamWriter(subscription, Framing(), sink, on_close=released.append)
    pump = asyncio.create_task(sink.run(writer))
    await settle()
    subscription.offer(event(1))
    await settle()
    subscription.close(CloseReason.DRAIN)
    async with asyncio.timeout(5):
        await pump
    assert sink.sent == [["open"], ["e1"]]
    assert sink.finished == (["closing:draining"], CloseReason.DRAIN)
    assert released == [subscription]


async def test_a_pumped_send_the_hub_aborts_ends_the_stream_not_the_task() -> None:
    subscription = Subscription((TopicPattern("t/1", None),), max_pending=10)
    sink = ListSink(subscription, asyncio.Event())  # never opens: the client does not read
    released: list[Subscription] = []
    writer = StreamWriter(subscription, Framing(), sink, on_close=released.append)
    pump = asyncio.create_task(sink.run(writer))
    await settle()
    assert subscription.writing_since > 0
    subscription.abort_write()
    async with asyncio.timeout(5):
        await pump  # returns normally: a stuck write is not a shutdown
    assert not pump.cancelled()
    assert released == [subscription]
    assert sink.finished is None  # the client is not reading: nothing more is sent


async def test_a_pump_cancelled_by_the_server_hands_the_subscription_back() -> None:
    subscription = Subscription((TopicPattern("t/1", None),), max_pending=10)
    gate = asyncio.Event()
    gate.set()
    sink = ListSink(subscription, gate)
    released: list[Subscription] = []
    writer = StreamWriter(subscription, Framing(), sink, on_close=released.append)
    pump = asyncio.create_task(sink.run(writer))
    await settle()
    pump.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await pump
    assert released == [subscription]
    assert subscription.close_reason is CloseReason.CLIENT
