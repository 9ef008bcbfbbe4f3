"""Input to a running job: ``value = await ctx.wait_for_input("approve", schema=Model)``.

Decisions (cited as N1..N6):

N1. The answer lives in the store (``job_inputs``, ``sql.py`` Q9), never only in memory:
    ``POST /api/jobs/{id}/input`` checks the value against the request's JSON schema (422,
    nothing stored), then inserts it; the primary key lets exactly one of concurrent answers in
    (the others get 409). The waiting handler learns of it from the process that stored it at
    once (``LiveJob.input_arrived``), or, when it runs elsewhere (a ``jobcast worker``), from
    the store, which it reads every ``POLL_INTERVAL`` while it waits.
N2. A waiting job holds no runner slot: an async handler gives its slot back while it waits
    and takes one again (queueing like any job) once the answer came. The job stays
    ``running``: waiting is what ``Job.waiting`` (the request: ``name``, ``schema``,
    ``prompt``, ``timeout_at``) and the ``waiting`` event say; a ``resumed`` event (the
    whole job, ``inputs`` holding the value, ``waiting`` null) ends it.
N3. Restarts: a waiting job is a running job to the restart rule (lifecycle.R3). A handler that
    waits for input should be ``retry_safe`` (or have a retry policy): after a crash,
    SIGKILL, a shutdown or a dead worker it is run again from the start, and each
    ``wait_for_input`` whose answer is already stored returns it at once (replayed) without
    waiting or publishing anything; the first one without an answer waits again, with its
    timeout counted afresh. A handler that is not safe to retry fails as ``Interrupted``,
    as any interrupted job does.
N4. A timeout is the handler's choice: ``default=`` is returned when none came, otherwise
    :class:`InputTimeout` fails the job (not retried: nobody answered, another attempt would
    ask again). An answer stored after the timeout is ignored.
N5. Names are short identifiers; a job waits for one input at a time (the snapshot shows it).
N6. A sync handler (run in a thread, lifecycle.R2) calls ``ctx.wait_for_input`` without
    ``await``: the wait runs on the job's event loop as an async handler's does, and the
    thread blocks on its answer, checking every ``SYNC_CANCEL_CHECK`` seconds whether the job
    was cancelled (then the wait is cancelled and :class:`JobCancelled` raised). It keeps
    its runner slot: its thread stays taken, and a slot given back would let another job
    start with no thread to run it (R2's "never running while queued in the pool").
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jobcast.errors import InvalidInput
from jobcast.jobs.model import Job
from jobcast.jobs.retry import Fatal

if TYPE_CHECKING:
    from jobcast.stores.base import JobStore

#: How often a waiting job reads the store for an answer stored by another process (N1).
POLL_INTERVAL = 0.5
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_PROMPT = 2000
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NO_DEFAULT: Any = object()


class InputTimeout(Fatal):
    """No input came in time and the handler gave no default (N4): the job fails."""


class Waiter(Protocol):
    """What waiting needs of a live job (``live.LiveJob``)."""

    job: Job
    store: JobStore
    input_arrived: asyncio.Event
    slots: asyncio.Semaphore | None
    holds_slot: bool

    async def change(self, event_type: str, mutate: Callable[[Job], None]) -> None: ...


def valid_name(name: Any) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidInput("an input name is 1 to 64 letters, digits or '_.-'")
    return name


async def wait_for_input(
    live: Waiter,
    name: str,
    schema: dict[str, Any],
    *,
    prompt: str | None,
    seconds: float,
    default: Any = NO_DEFAULT,
    keep_slot: bool = False,
) -> Any:
    """The JSON value given for ``name`` (N1), or ``default`` after ``seconds`` (N4);
    ``keep_slot``: a sync handler's wait, which keeps its slot (N6)."""
    name = valid_name(name)
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    store, job = live.store, live.job
    stored = await store.get_input(job.id, name)
    if stored is not None:  # N3: replayed
        if name not in job.inputs:
            job.inputs[name] = stored[0]
        return stored[0]
    timeout_at = time.time() + seconds
    request = {"name": name, "schema": schema, "prompt": prompt, "timeout_at": timeout_at}
    live.input_arrived.clear()
    await live.change("waiting", lambda job: setattr(job, "waiting", request))
    if not keep_slot:
        _give_slot_back(live)  # N2
    stored = await _until_answered(live, name, timeout_at)  # cancelled: no slot to take back
    await _take_slot(live)
    if stored is None:
        await live.change("resumed", lambda job: setattr(job, "waiting", None))
        if default is NO_DEFAULT:
            raise InputTimeout(f"no input {name!r} came within {seconds:g} seconds")
        return default

    def answered(job: Job) -> None:
        job.waiting = None
        job.inputs[name] = stored[0]

    await live.change("resumed", answered)
    return stored[0]


async def _until_answered(live: Waiter, name: str, timeout_at: float) -> tuple[Any] | None:
    while True:
        stored = await live.store.get_input(live.job.id, name)
        if stored is not None:
            return stored
        left = timeout_at - time.time()
        if left <= 0:
            return None
        # asyncio.timeout, not wait_for (3.11's can swallow a cancel: the job's own)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(POLL_INTERVAL, left)):
                await live.input_arrived.wait()
        live.input_arrived.clear()


def _give_slot_back(live: Waiter) -> None:
    if live.slots is not None and live.holds_slot:
        live.holds_slot = False
        live.slots.release()


async def _take_slot(live: Waiter) -> None:
    if live.slots is not None and not live.holds_slot:
        await live.slots.acquire()
        live.holds_slot = True
