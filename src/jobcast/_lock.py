"""An exclusive lock file, held for as long as a process uses an embedded-only resource.

The embedded default (the SQLite event history, the in-process job runner) serves exactly one
process. A second process on the same data directory, e.g. under ``uvicorn --workers 2``,
would silently split subscribers between processes that never see each other's events, or run
the same queued jobs twice. Holding ``flock`` on a file makes the second one fail at start with
a message that says what to do instead. The kernel releases the lock when the process dies, so
a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from jobcast.errors import Conflict

ADVICE = (
    "the embedded default serves one process; to run several (uvicorn --workers N, or several "
    "`jobcast serve`), set JOBCAST_BROKER_URL=redis://... and JOBCAST_QUEUE_URL=redis://... "
    "(see 'Scaling out' in the README)"
)


class ProcessLock:
    """``acquire()`` or raise :class:`Conflict`; ``release()`` when done."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(
                f"{self.what} in {self.path.parent} is already used by another jobcast "
                f"process: {ADVICE}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious operator
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
