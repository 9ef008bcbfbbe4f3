"""One instance's delivery of the PostgreSQL history, in position order (``postgres.py``, G2).

Positions reach an instance three ways: its own commits (with their events in hand), the
notifications of every commit (a position only), and its reads of the counter row. This
class hands events to the hub strictly in order, once each: its own commit directly when
nothing is missing before it, everything else read from the table. It also answers "tell me
when position p is delivered" (a publish's acknowledgement, a replay catching up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from jobcast.events import Event

logger = logging.getLogger("jobcast.brokers.postgres")

READ_BATCH = 1000  # rows per read
#: Reads the rows in (after, upto], at most ``limit``, in position order, as events.
Fetch = Callable[[int, int, int], Awaitable[list[Event]]]


class InOrder:
    def __init__(
        self, deliver: Callable[[list[Event]], None], fetch: Fetch, skipped: Callable[[], None]
    ) -> None:
        self._deliver = deliver
        self._fetch = fetch
        #: Called when rows were trimmed before they were delivered here (G4).
        self._skipped = skipped
        self.delivered = 0  # newest position handed to the hub
        self.known = 0  # newest position known to be committed
        self._local: dict[int, list[Event]] = {}  # first position -> committed here
        #: Whom to call once a position is delivered: called in the turn that delivers it.
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._reading = False
        self.wake = asyncio.Event()

    def reset(self, newest: int) -> None:
        """Start over in a new history whose newest position is ``newest``."""
        self.delivered, self.known, self._local = 0, newest, {}
        self.wake.set()

    def announce(self, position: int) -> None:
        """``position`` is committed (a notification, the counter row, a move)."""
        if position > self.known:
            self.known = position
            self.wake.set()

    def committed_here(self, events: list[Event]) -> None:
        first, last = events[0].position, events[-1].position
        self.known = max(self.known, last)
        if last <= self.delivered:  # the notification was faster: already read and delivered
            self._resolve_waiters()
        elif not self._reading and self.delivered == first - 1:
            self._hand_over(events)  # nothing between: no read back
        else:
            self._local[first] = events
            self.wake.set()

    def when_delivered(self, position: int) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_delivered(position, lambda: None if waiter.done() else waiter.set_result(None))
        return waiter

    def on_delivered(self, position: int, call: Callable[[], None]) -> None:
        """Call ``call`` once ``position`` is delivered, in the same turn of the loop."""
        self._waiters.append((position, call))
        if position <= self.delivered:
            self._resolve_waiters()
        else:
            self.announce(position)

    async def catch_up(self, position: int, seconds: float) -> None:
        """Wait (at most ``seconds``) until ``position`` is delivered."""
        if self.delivered < position:
            # asyncio.timeout: wait_for can lose the caller's cancellation on 3.11 (redis.py)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.shield(self.when_delivered(position))

    def release(self) -> None:
        """At close: whoever waits for a committed position is answered."""
        waiters, self._waiters = self._waiters, []
        for _, call in waiters:
            call()

    async def read(self) -> None:
        """Deliver everything up to ``known``, reading from the table what is not in hand."""
        try:
            while self.delivered < self.known:
                following = self.delivered + 1
                if following in self._local:
                    self._hand_over(self._local.pop(following))
                    continue
                self._reading = True
                events = await self._fetch(self.delivered, self.known, READ_BATCH)
                self._reading = False
                if not events or events[0].position != following or _holes(events):
                    logger.warning(
                        "events from position %d were trimmed before delivery", following
                    )
                    self._skipped()
                if events:
                    self._hand_over(events)
                else:
                    self.delivered = self.known
                    self._resolve_waiters()
                self._local = {
                    first: batch
                    for first, batch in self._local.items()
                    if batch[-1].position > self.delivered
                }
        finally:
            self._reading = False

    def _hand_over(self, events: list[Event]) -> None:
        events = [e for e in events if e.position > self.delivered]
        if events:
            self.delivered = events[-1].position
            self._deliver(events)
            self._resolve_waiters()

    def _resolve_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for position, call in waiters:
            if position > self.delivered:
                self._waiters.append((position, call))
            else:
                call()


def _holes(events: Sequence[Any]) -> bool:
    """Whether positions skip a number (G1 leaves none, so retention dropped them: G4)."""
    return bool(events[-1].position - events[0].position != len(events) - 1)
