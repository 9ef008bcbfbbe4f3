"""A ``/ws/events`` client's acknowledgements, durable per ``client_id`` (event_socket.W3).

Acks are cumulative by id (an older one never moves the mark back) and written to the job
store at most once a second and when the socket closes, so a crash can replay up to a second of
acknowledged events (at-least-once, never a loss). A ``subscribe`` without ``last_event_id``
resumes after the mark.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from jobcast.errors import InvalidInput, JobcastError
from jobcast.events import EventId
from jobcast.stores.base import JobStore

SAVE_INTERVAL = 1.0
MAX_CLIENT_ID = 128


class SocketAcks:
    """The acknowledgement mark of one client (``subject``, ``client_id``)."""

    def __init__(self, store: JobStore, subject: str, client_id: str | None) -> None:
        self.store = store
        self.subject = subject
        self.client_id = client_id[:MAX_CLIENT_ID] if client_id else None
        self._mark: str | None = None
        self._saved: str | None = None
        self._saved_at = 0.0

    async def resume_from(self) -> str | None:
        """Where a subscribe without ``last_event_id`` resumes (``None``: no client id)."""
        if self.client_id is None:
            return None
        return self._mark or await self.store.load_ack(self.subject, self.client_id)

    async def acknowledge(self, event_id: Any) -> None:
        if self.client_id is None:
            raise InvalidInput("acks need a client id: connect with ?client_id=...")
        new = EventId.parse(event_id) if isinstance(event_id, str) else None
        if new is None:
            raise InvalidInput("'id' must be an event id")
        current = EventId.parse(self._mark) if self._mark else None
        if current is None or current.epoch != new.epoch or new.position > current.position:
            self._mark = str(event_id)  # cumulative: an older ack never moves it back
        await self.save(force=False)

    async def save(self, *, force: bool) -> None:
        """Write the mark if it moved (at most once a second unless ``force``)."""
        if self.client_id is None or self._mark is None or self._mark == self._saved:
            return
        if not force and time.monotonic() - self._saved_at < SAVE_INTERVAL:
            return
        mark = self._mark
        with contextlib.suppress(JobcastError):  # best effort at close; retried on next ack
            await self.store.save_ack(self.subject, self.client_id, mark)
            self._saved = mark
        self._saved_at = time.monotonic()
