"""Sinks that must await their writes (an ASGI ``send``, a WebSocket): one pump coroutine each.

The writer (``writer.py``) calls its sink back from event-loop callbacks and cannot await. A
pumped sink takes the writer's chunk, wakes its pump, and says "wait" (writer.C1); the pump
sends the chunk and resumes the writer. The pump is the coroutine that carries the connection
anyway (the ASGI response's, the WebSocket route's), so this adds no task.

Decisions (cited as P1..P3):

P1. One chunk at a time: the writer hands over the next chunk only after the pump resumed it,
    so a sink holds at most one chunk and never queues.
P2. Each send is marked as writing (hub.H6): a client that stopped reading has its send
    cancelled by the hub's ticker (``abort``), which is not a shutdown: the pump swallows that
    one cancellation and ends. Any other cancellation (the server stopping) propagates.
P3. The end's own writes (a closing frame, the final empty body, a close code) are sends like
    the others, still guarded by P2; the writer hands the subscription back only after them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sized
from typing import Any, Generic, Protocol, TypeVar

from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason

Chunk = TypeVar("Chunk", bound=Sized)


class Guarded(Protocol):
    """What a pump marks while it sends (a subscription, or a socket's feed: P2)."""

    writing_since: float

    @property
    def write_aborted(self) -> bool:
        """Whether the hub ended a write of it (hub.H6)."""
        ...


class PumpedSink(Generic[Chunk]):
    """A sink whose writes are awaited by one pump coroutine (:meth:`run`)."""

    #: Errors of a send that mean the client is gone.
    gone: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, subscription: Guarded) -> None:
        self.subscription = subscription
        self._pending: Chunk | None = None
        #: Set by ``end``: the closing chunk and why, and whom to tell once written (P3).
        self._ending: tuple[Chunk | None, CloseReason | None] | None = None
        self._done: Callable[[], None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None

    # -- the sink (writer.Sink) ---------------------------------------------------------------

    def write(self, chunk: Chunk) -> bool:
        self._pending = chunk  # P1
        self._poke()
        return False

    def end(
        self, closing: Chunk | None, reason: CloseReason | None, done: Callable[[], None]
    ) -> None:
        self._ending = (closing, reason)
        self._done = done
        self._poke()

    def abort(self) -> None:
        if self._task is not None:  # P2: only while the pump runs
            self._task.cancel()

    # -- the pump ---------------------------------------------------------------------------

    async def send(self, chunk: Chunk) -> None:
        """Send one chunk."""
        raise NotImplementedError

    async def finish(self, closing: Chunk | None, reason: CloseReason | None) -> None:
        """The end's writes (P3); ``reason`` is ``None`` when the stream finished by itself."""
        raise NotImplementedError

    async def run(self, writer: StreamWriter[Any, Chunk]) -> None:
        """Start ``writer`` and send what it hands over until the stream ends."""
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            writer.start()
            while True:
                chunk = self._pending
                if chunk is not None:
                    self._pending = None
                    await self._guarded(self.send(chunk))
                    writer.resumed()
                elif self._ending is not None:
                    closing, reason = self._ending
                    if reason is not CloseReason.CLIENT:
                        await self._guarded(self.finish(closing, reason))
                    return
                else:
                    wake = self._wake = loop.create_future()
                    await wake
        except self.gone:
            writer.lost()
        except asyncio.CancelledError:
            if not self.subscription.write_aborted:
                raise
            # P2: the hub ended a write the client stopped reading; this is not a shutdown.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
        finally:
            self._task = None
            if not writer.ended:
                writer.lost()  # the pump was cancelled: the server is stopping
            if self._done is not None:
                self._done()

    async def _guarded(self, sending: Any) -> None:
        subscription = self.subscription
        subscription.writing_since = time.monotonic()  # P2
        try:
            await sending
        finally:
            subscription.writing_since = 0.0

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
