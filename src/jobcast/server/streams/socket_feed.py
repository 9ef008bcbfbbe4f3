"""What ``/ws/events`` writes: its subscriptions and its replies, merged into one source.

A ``/ws/events`` socket holds one hub subscription per pattern (event_socket.W1) and replies to
its client's ops. :class:`SocketFeed` presents all of it to the one stream writer
(``writer.Source``): the replies and queued replays first, in the order they were queued, then
the live events of every subscription merged in position order.

Decisions (cited as K1..K4):

K1. One future to wait on. The feed's waiter is done when any subscription wakes, a reply is
    queued, the socket must close, or the server drains; it hangs on each subscription's own
    waiter future (no task per subscription). A socket with no subscription is pinged every
    heartbeat interval by a timer of its own, and watches the hub's drain.
K2. Bounded (event_socket.W2): the outbox holds at most :data:`MAX_OUTBOX` items; past that the
    socket is closed (1008), never left to grow.
K3. The socket ends for its own reasons (an expired credential, an overflow) or for its
    subscriptions': the first that closed for any reason but the client's, or the drain.
K4. A stuck write is found by the hub's ticker like any stream's: every subscription is marked
    writing while the writer's sink holds a chunk, and each knows the writer to cancel.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from jobcast.events import Event
from jobcast.hub import Hub
from jobcast.subscription import CloseReason, Subscription

MAX_OUTBOX = 20_000
#: An item of the feed: a reply or control message (JSON text), or an event.
Item = str | Event


class SocketFeed:
    """A ``/ws/events`` socket's subscriptions and outbox, as one writer source (K1-K4)."""

    def __init__(self, hub: Hub, heartbeat_interval: float) -> None:
        self.hub = hub
        self.heartbeat_interval = heartbeat_interval
        self.subscriptions: dict[str, Subscription] = {}
        self.outbox: collections.deque[Item] = collections.deque()
        #: Why the socket itself must close (K3): the reason, the close code and its reason
        #: text, and the error message sent first (``None``: no message).
        self.ending: tuple[CloseReason, int, str, str | None] | None = None
        self._writer: Any = None
        self._writing_since = 0.0
        self._beat = False  # a ping is due on a socket with no subscription (K1)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drain_watch: asyncio.Future[Any] | None = None

    # -- the socket's side -------------------------------------------------------------------

    def add(self, text: str, subscription: Subscription) -> None:
        self.subscriptions[text] = subscription
        if self._writer is not None:
            subscription.attach(self._writer)  # K4
        self._wake()

    def remove(self, text: str) -> Subscription | None:
        subscription = self.subscriptions.pop(text, None)
        if subscription is not None:
            subscription.detach()
        return subscription

    def queue(self, item: Item) -> None:
        """Queue a reply or a replayed event; an overflowing outbox ends the socket (K2)."""
        if len(self.outbox) >= MAX_OUTBOX:
            self.end(CloseReason.SLOW, 1008, "outbox overflow", None)
        else:
            self.outbox.append(item)
        self._wake()

    def end(self, reason: CloseReason, code: int, text: str, message: str | None) -> None:
        """Close the socket for its own reason (K3), once the writer gets to it."""
        if self.ending is None:
            self.ending = (reason, code, text, message)
        self._wake()

    # -- the writer's side (writer.Source) -----------------------------------------------------

    @property
    def close_reason(self) -> CloseReason | None:
        if self.ending is not None:
            return self.ending[0]
        for subscription in self.subscriptions.values():
            reason = subscription.close_reason
            if reason is not None and reason is not CloseReason.CLIENT:
                return reason
        return CloseReason.DRAIN if self.hub.draining else None

    @property
    def heartbeat_due(self) -> bool:
        return self._beat or any(s.heartbeat_due for s in self.subscriptions.values())

    @property
    def write_aborted(self) -> bool:
        return any(s.write_aborted for s in self.subscriptions.values())

    @property
    def writing_since(self) -> float:
        return self._writing_since

    @writing_since.setter
    def writing_since(self, value: float) -> None:
        self._writing_since = value
        for subscription in self.subscriptions.values():  # K4
            subscription.writing_since = value

    def attach(self, writer: Any) -> None:
        self._writer = writer
        for subscription in self.subscriptions.values():
            subscription.attach(writer)

    def detach(self) -> None:
        self._writer = None
        self._disarm()
        for subscription in self.subscriptions.values():
            subscription.detach()

    def is_attached(self, writer: Any) -> bool:
        return self._writer is writer

    def close(self, reason: CloseReason) -> None:
        if self.ending is None:
            self.ending = (reason, 1000, reason.value, None)
        for subscription in self.subscriptions.values():
            subscription.close(reason)
        self._wake()

    def waiter(self) -> asyncio.Future[None] | None:
        subscriptions = list(self.subscriptions.values())
        if (
            self.outbox
            or self.heartbeat_due
            or self.close_reason is not None
            or any(s.pending_count for s in subscriptions)
        ):
            return None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        for subscription in subscriptions:
            waited = subscription.waiter()
            if waited is None:  # it has something after all
                self._wake()
                return waiter
            waited.add_done_callback(self._wake)
        if not subscriptions:  # K1: pings and the drain, with no subscription to bring them
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.heartbeat_interval, self._ping_due)
            self._drain_watch = asyncio.ensure_future(self.hub.drained.wait())
            self._drain_watch.add_done_callback(self._wake)
        return waiter

    def take(self) -> list[Item]:
        items: list[Item] = list(self.outbox)
        self.outbox.clear()
        events: list[Event] = []
        for subscription in self.subscriptions.values():
            events.extend(subscription.take())
        if len(self.subscriptions) > 1:
            events.sort(key=lambda event: event.position)  # event_socket.W1
        items.extend(events)
        return items

    def mark_written(self) -> None:
        # Only a write restarts the quiet clock (writer.C2): were a wake-up with nothing to
        # send to restart it, the hub's ticker would never find the socket quiet for a whole
        # interval, and an idle socket would get no pings (and proxies would cut it).
        self._beat = False
        for subscription in self.subscriptions.values():
            subscription.mark_written()

    # -- waking --------------------------------------------------------------------------------

    def _ping_due(self) -> None:
        self._timer = None
        self._beat = True
        self._wake()

    def _wake(self, _: Any = None) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        self._disarm()
        if not waiter.done():
            waiter.set_result(None)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watch, self._drain_watch = self._drain_watch, None
        if watch is not None and not watch.done():
            watch.cancel()
