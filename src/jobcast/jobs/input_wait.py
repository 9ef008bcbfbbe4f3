"""Input to a running job: ``value = await ctx.wait_for_input("approve", schema=Model)``.

Decisions (cited as N1..N10):

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
    waiting or publishing anything; the first one without an answer waits again (N8 keeps
    the timeout of a wait it was stopped in). A handler that is not safe to retry fails as
    ``Interrupted``, as any interrupted job does; one that is waits parked (N8).
N4. A timeout is the handler's choice: ``default=`` is returned when none came, otherwise
    :class:`InputTimeout` fails the job (not retried: nobody answered, another attempt would
    ask again). An answer given after ``timeout_at`` is refused (409), so a parked job's
    timeout run (N10) never finds one.
N5. Names are short identifiers; a job waits for one input at a time (the snapshot shows it).
N6. A sync handler (run in a thread, lifecycle.R2) calls ``ctx.wait_for_input`` without
    ``await``: the wait runs on the job's event loop as an async handler's does, and the
    thread blocks on its answer, checking every ``SYNC_CANCEL_CHECK`` seconds whether the job
    was cancelled (then the wait is cancelled and :class:`JobCancelled` raised). It keeps
    its runner slot: its thread stays taken, and a slot given back would let another job
    start with no thread to run it (R2's "never running while queued in the pool"), unless
    it parks (N7).
N7. Parking: a re-runnable handler (``retry_safe`` or a retry policy: lifecycle.R3's rule) that
    reaches a wait with no answer stored, on ``jobcast worker`` (async or sync) or as a sync
    handler in the embedded runner, does not wait at all: the ``waiting`` event is published
    and stored, then :class:`Parked` ends the run without a terminal state. The job stays
    ``running`` with its request in ``waiting``; its slot, thread or SAQ task is free. It is
    run again from the start (``attempts`` unchanged: parking is not a failure) once the
    answer is stored or the wait's ``timeout_at`` came; the re-run gets the earlier inputs
    replayed (N3), and the wait it parked in ends there with the ``resumed`` event, as an
    unparked wait's does. So the code before a wait runs once per park: that is what
    ``retry_safe`` promises. A handler that may not be re-run waits as N2 and N6 say.
N8. A parked job is whatever the store holds as ``running`` with a ``waiting`` request and a
    re-runnable kind (:func:`is_parked`): no process holds it, so a restart, SIGKILL
    included, finds it as it was. The embedded runner's recovery keeps it parked, a worker
    that dequeues it (woken, timed out, or swept from a dead worker) runs it only when
    :func:`parked_for` says it is due, and a shutdown parks a waiting re-runnable job instead
    of re-queuing it. A re-run reaching the same wait keeps its ``timeout_at`` (no second
    ``waiting`` event): the timeout counts from the first ask, across parks and restarts.
N9. Waking, never lost: whoever stores an answer wakes the parked job (the embedded runner
    queues it; a server makes its SAQ job due now, ``worker_queue.py``). A park that races
    the answer checks again after it parked: the embedded runner reads ``input_arrived``
    once the job is parked (one event loop: no gap); a worker reads the store once SAQ holds
    the job again (``worker.K8``). As a last resort (an answer stored by another instance,
    a wake lost to a queue outage, a worker killed between the two), a parked job is looked
    at every ``PARK_RECHECK`` seconds: one store read, the handler is not run.
N10. Timeouts and cancels of parked jobs: the wake at ``timeout_at`` re-runs the handler, whose
    wait then ends with the ``resumed`` event and ``default=`` or :class:`InputTimeout` (N4).
    Cancelling a parked job ends it ``cancelled`` without running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from jobcast.errors import InvalidInput
from jobcast.jobs.model import Job, JobState
from jobcast.jobs.retry import Fatal

if TYPE_CHECKING:
    from jobcast.stores.base import JobStore

#: How often a waiting job reads the store for an answer stored by another process (N1).
POLL_INTERVAL = 0.5
#: The longest a parked job goes unchecked when no wake reaches it (N9).
PARK_RECHECK = 60.0
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_PROMPT = 2000
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NO_DEFAULT: Any = object()


class InputTimeout(Fatal):
    """No input came in time and the handler gave no default (N4): the job fails."""


class Parked(BaseException):
    """Raised out of ``wait_for_input`` to end a run that parks (N7). A ``BaseException``,
    so a handler's ``except Exception`` does not swallow it."""


def is_parked(job: Job, rerunnable: bool) -> bool:
    """Whether a stored job is parked (N8): ``running``, waiting, and its kind re-runnable."""
    return job.state is JobState.RUNNING and job.waiting is not None and rerunnable


async def parked_for(store: JobStore, job: Job) -> float | None:
    """Seconds a parked job has still to wait: ``None`` once it is due (its answer is
    stored, or its ``timeout_at`` came): then it runs again (N8)."""
    waiting = job.waiting or {}
    name = waiting.get("name")
    if not isinstance(name, str) or await store.get_input(job.id, name) is not None:
        return None
    left = float(waiting.get("timeout_at") or 0) - time.time()
    return left if left > 0 else None


def parked_for_now(job: Job) -> float:
    """Seconds until a job that just parked times out (its answer is not known yet)."""
    waiting = job.waiting or {}
    return max(0.0, float(waiting.get("timeout_at") or 0) - time.time())


class Waiter(Protocol):
    """What waiting needs of a live job (``live.LiveJob``)."""

    job: Job
    store: JobStore
    input_arrived: asyncio.Event
    slots: asyncio.Semaphore | None
    holds_slot: bool
    #: Whether a wait with no answer parks the job instead of waiting (N7).
    parks: bool

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
    # The wait this job was parked in (N8), or stopped in by a restart: it goes on.
    current = job.waiting if job.waiting and job.waiting.get("name") == name else None
    if stored is not None:
        if current is not None:  # N7: the parked wait ends here, as a waited one does
            await _answered(live, name, stored[0])
        elif name not in job.inputs:  # N3: replayed
            job.inputs[name] = stored[0]
        return stored[0]
    if current is not None and isinstance(current.get("timeout_at"), int | float):
        timeout_at = float(current["timeout_at"])  # N8: its timeout is not counted afresh
    else:
        timeout_at = time.time() + seconds
        request = {"name": name, "schema": schema, "prompt": prompt, "timeout_at": timeout_at}
        live.input_arrived.clear()
        await live.change("waiting", lambda job: setattr(job, "waiting", request))
    if live.parks and timeout_at > time.time():
        raise Parked  # N7: the run ends; an answer or the timeout runs it again
    if not keep_slot:
        _give_slot_back(live)  # N2
    stored = await _until_answered(live, name, timeout_at)  # cancelled: no slot to take back
    await _take_slot(live)
    if stored is None:
        await live.change("resumed", lambda job: setattr(job, "waiting", None))
        if default is NO_DEFAULT:
            raise InputTimeout(f"no input {name!r} came within {seconds:g} seconds")
        return default
    await _answered(live, name, stored[0])
    return stored[0]


async def _answered(live: Waiter, name: str, value: Any) -> None:
    def answered(job: Job) -> None:
        job.waiting = None
        job.inputs[name] = value

    await live.change("resumed", answered)


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
