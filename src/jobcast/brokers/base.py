"""The broker contract: assign ids, keep history, and deliver every event to every instance.

A broker owns the order of events: it gives each event its position, stores it in the retained
history, and only then hands it to ``deliver`` (on every instance that shares the broker). That
order is what makes "replay, then go live" exact: an event a subscriber receives live is already
in the history a later replay reads.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

#: Called by the broker with each committed batch, in position order, on the event loop.
Deliver = Callable[[list[Event]], None]


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history to keep, per topic."""

    max_events_per_topic: int = 1000
    max_age_seconds: float = 24 * 3600
    #: Job topics (``jobs/*``) keep their history until the job ends plus this long (Redis).
    job_grace_seconds: float = 3600


class Gap:
    """Why a replay cannot cover what a client missed (sent in the ``reset`` frame)."""

    HISTORY_LOST = "history_lost"  # the id belongs to another epoch: the history was reset
    TRIMMED = "trimmed"  # retention dropped events the client has not seen
    UNKNOWN_ID = "unknown_id"  # the id is malformed or newer than anything published
    TOO_FAR_BEHIND = "too_far_behind"  # more missed events than one replay may carry


@dataclass(frozen=True, slots=True)
class Replay:
    """The answer to "what did I miss on these topics since ``after``?"."""

    #: Retained events after the requested id, oldest first (empty when there is a gap).
    events: list[Event]
    #: The newest position covered by this answer; live events up to it are duplicates.
    head: EventId
    #: ``None`` when ``events`` is everything the client missed, else a :class:`Gap` reason.
    gap: str | None = None


class Broker(Protocol):
    epoch: str

    @property
    def head(self) -> EventId:
        """The newest event this process delivered: every later one reaches subscriptions
        registered now (hub.H2)."""
        ...

    #: Whether other processes publish into the same history (Redis): what they change (job
    #: access) must then be announced through it.
    shared: bool

    async def start(self, deliver: Deliver, history_lost: Callable[[], None] | None = None) -> None:
        """Hand every committed batch to ``deliver``, in order; a shared broker that loses its
        history while running (a flushed Redis) calls ``history_lost``."""
        ...

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]: ...

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event] | None:
        """Publish without waiting, when this broker can: the events, committed and delivered
        as ``publish`` would; or ``None``, with nothing done (then ``publish`` must be used)."""
        ...

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        """What was missed on ``patterns`` since ``after``: at most ``limit`` events and
        ``max_bytes`` of event data, else a ``too_far_behind`` gap (read no further)."""
        ...

    async def close(self) -> None: ...


def new_epoch() -> str:
    """A short random name for a new history."""
    return secrets.token_hex(4)


def check_position(epoch: str, head: int, after: EventId) -> str | None:
    """The gap reason that needs no history lookup, or ``None``."""
    if after.epoch != epoch:
        return Gap.HISTORY_LOST
    if after.position > head:
        return Gap.UNKNOWN_ID
    return None
