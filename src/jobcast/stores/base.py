"""The job store contract: where jobs and WebSocket acknowledgements persist.

One implementation (``sql.py``, SQLAlchemy Core) serves SQLite now and PostgreSQL later; the
contract tests in ``tests/test_store_contract.py`` run over every store URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from jobcast.jobs.model import Job, JobState


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """A parent job's children (``jobs/batches.py``): how many, how many ended in each state,
    and the sum of the progress of those not ended yet (weighted progress, G6)."""

    total: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    running_progress: float = 0.0

    @property
    def ended(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    def by_state(self) -> dict[str, int]:
        return {"succeeded": self.succeeded, "failed": self.failed, "cancelled": self.cancelled}


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A page of jobs, newest first. ``cursor`` is the ``next_cursor`` of the previous page."""

    owner: str | None = None
    states: Collection[JobState] = ()
    kind: str | None = None
    limit: int = 50
    cursor: str | None = None
    #: Only jobs with every one of these tags.
    tags: Collection[str] = ()
    #: Only the jobs of this batch (``Job.parent_id``).
    parent: str | None = None


@dataclass(slots=True)
class StoreStats:
    """Counters since start, read when metrics are scraped (``server/ops/metrics.py``)."""

    #: Job rows inserted or updated, and the transactions that wrote them (group commits).
    rows_written: int = 0
    transactions: int = 0
    #: Database errors turned into :class:`~jobcast.errors.Unavailable`, by operation.
    read_errors: int = 0
    write_errors: int = 0


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    #: Pass as ``cursor`` to get the next page; ``None`` on the last page.
    next_cursor: str | None


class JobStore(Protocol):
    """Persistence for jobs; every method raises :class:`~jobcast.errors.Unavailable` when
    the backend fails."""

    stats: StoreStats

    async def open(self) -> None:
        """Connect, and create or check the schema."""

    async def close(self) -> None: ...

    async def create(self, job: Job) -> None:
        """Insert a new job (its id is new)."""

    async def create_keyed(
        self, job: Job, key: str, request_hash: str, retention: float
    ) -> tuple[str, str] | None:
        """Insert a new job under the idempotency key ``key`` of its owner, in one transaction
        with the key; ``None`` when it was inserted. When the owner used ``key`` less than
        ``retention`` seconds ago, nothing is inserted and the earlier job's id and request hash
        are returned. Concurrent calls with one key, on any instance, insert one job."""

    async def claim_publish(
        self, subject: str, key: str, request_hash: str, retention: float
    ) -> tuple[str, list[str] | None] | None:
        """Claim the idempotency key ``key`` of ``subject`` for an event publish; ``None`` when
        claimed. When it was used less than ``retention`` seconds ago: that publish's request
        hash and event ids (``None`` while it is still under way)."""

    async def record_publish(self, subject: str, key: str, ids: list[str] | None) -> None:
        """The ids a claimed publish got; ``None``: it failed, and the key is free again."""

    async def get(self, job_id: str) -> Job | None: ...

    async def save(self, job: Job) -> None:
        """Write every mutable field of an existing job, except its readers.

        Readers change only through :meth:`change_readers`: a process that runs the job (a
        worker elsewhere) saves its progress from its own copy, which must not undo a grant or
        a revoke made meanwhile.
        """

    async def change_readers(
        self, job_id: str, *, add: str | None = None, remove: str | None = None, limit: int
    ) -> list[str] | None:
        """Grant ``add`` or withdraw ``remove`` read access to a job, read and written in one
        transaction so concurrent changes all take effect; the readers after, or ``None`` if
        there is no such job. Raises :class:`InvalidInput` past ``limit`` readers."""

    async def change_responder(self, job_id: str, subject: str, *, may: bool) -> None:
        """Let ``subject`` (a reader of the job) give it input, or no longer (sql.Q11)."""

    async def is_responder(self, job_id: str, subject: str) -> bool:
        """Whether ``subject`` may give the job input as one of its readers."""

    async def list_jobs(self, query: JobQuery) -> JobPage: ...

    async def delete(self, job_id: str) -> bool:
        """Remove a job; False if there was none."""

    async def put_input(self, job_id: str, name: str, value: Any, given_by: str) -> bool:
        """Store the input ``name`` of a job; False when one was already stored (concurrent
        answers: exactly one is stored, on every instance)."""

    async def create_batch(self, parent: Job, children: list[Job]) -> None:
        """Insert a batch's parent, its children and its counts in one transaction: all or
        nothing (``jobs/batches.py`` G2)."""

    async def end_child(
        self,
        batch_id: str,
        state: JobState,
        count: Callable[[Job, BatchCounts], bool | None],
        announce: Callable[[Job, bool], Awaitable[str | None]],
    ) -> tuple[Job, bool] | None:
        """Count a child's end (``state``) in batch ``batch_id``: ``count(parent, counts)``
        updates the parent (``None``: leave the parent's row alone, its handler runs),
        ``announce(parent, complete)`` publishes it (the id of its event is stored with it)
        before the transaction commits (the counts stay locked); the parent and whether the
        batch is complete, or ``None`` when there is no such batch. Concurrent ends, on any
        instance, each see their own count, in order (G3)."""

    async def add_child(self, child: Job) -> None:
        """Insert ``child`` of the running job ``child.parent_id`` and count it in that job's
        counts row (created with the first child) in one transaction (G6)."""

    async def batch_counts(self, batch_id: str) -> BatchCounts | None:
        """A parent's counts now, or ``None`` when it has no children."""

    async def update_batch(
        self, batch_id: str, update: Callable[[Job, BatchCounts], Awaitable[Job | None]]
    ) -> bool:
        """Under the counts row's lock (as :meth:`end_child`): ``update(parent, counts)`` may
        publish and returns the parent to store, or ``None`` to store nothing. False when
        there is no such batch."""

    async def get_input(self, job_id: str, name: str) -> tuple[Any] | None:
        """The stored input ``name`` of a job, as a one-tuple (its value may be ``null``)."""

    async def in_states(self, states: Collection[JobState], limit: int) -> list[Job]:
        """Jobs in any of ``states``, oldest first (recovery at startup)."""

    async def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (states without jobs may be missing)."""

    async def save_ack(self, subject: str, client_id: str, event_id: str) -> None:
        """Remember the newest event a WebSocket client acknowledged."""

    async def load_ack(self, subject: str, client_id: str) -> str | None: ...
