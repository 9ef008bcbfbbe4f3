"""Stopping on SIGTERM/SIGINT: drain the streams first, then let the server shut down.

Servers (uvicorn among them) wait for open responses before shutting down, and an event stream
never ends by itself, so the lifespan chains onto the server's signal handlers: the hub drains
at once (every stream ends with a spread-out retry hint), then the server's own handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from types import FrameType
from typing import Any

from jobcast.hub import Hub


@contextlib.contextmanager
def drain_on_exit_signals(hub: Hub, delay: float = 0.0) -> Any:
    """Drain the hub when the server is told to stop, then let the server's handler run.

    Servers (uvicorn among them) wait for open responses before shutting down, and an event
    stream never ends by itself; chaining onto the SIGTERM/SIGINT handler ends the streams at
    once (with spread-out retry hints) so the server can finish its graceful shutdown.

    With a ``delay``, the server's handler runs that many seconds later: until then the server
    still listens and answers everything but new streams, and ``/ready`` says 503, so a load
    balancer polling it stops routing here before the port closes. A second signal during the
    delay stops at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def chain(signum: int, frame: FrameType | None) -> None:
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)
        elif chained == signal.SIG_DFL:  # nobody else listens: behave as if we were not here
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    signals = 0
    delayed: list[asyncio.TimerHandle] = []

    def later(signum: int, frame: FrameType | None) -> None:
        if signals == 1:  # no second signal has stopped the server already
            delayed.append(loop.call_later(delay, chain, signum, frame))

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        loop.call_soon_threadsafe(hub.drain)
        if signals == 1 and delay > 0:
            loop.call_soon_threadsafe(later, signum, frame)
        else:
            for timer in delayed:  # the second signal stops now, not again later
                loop.call_soon_threadsafe(timer.cancel)
            chain(signum, frame)

    for exit_signal in (signal.SIGINT, signal.SIGTERM):
        previous[exit_signal] = signal.signal(exit_signal, handler)
    try:
        yield
    finally:
        for timer in delayed:
            timer.cancel()
        for signum, chained in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, chained)
