"""Retry policies: how many times a kind of job may run, how long it waits between attempts,
and which failures are worth another attempt.

A handler declares its policy when it is registered::

    @registry.handler("transcribe", retry=RetryPolicy(max_attempts=5, retry_on=(TimeoutError,)))
    async def transcribe(ctx, params): ...

and may decide for itself by raising :class:`Retry` (try again, optionally after a given delay)
or :class:`Fatal` (fail now, whatever the policy says).

Decisions (cited as T1..T4):

T1. Full jitter: attempt ``n`` (1-based) that failed waits a uniformly random time in
    ``[0, min(max, initial * factor ** (n - 1))]``. Jobs that failed together (a dependency
    went down) spread their retries instead of returning as a herd.
T2. ``max_attempts`` counts every run of a job, whatever ended it: a failure, a timeout or an
    interruption by a restart (lifecycle.R3). A job never runs more often than that.
T3. A submission may lower or raise ``max_attempts`` within ``1..MAX_ATTEMPTS``; the backoff
    and the retryable errors are the handler's (they describe how its failures behave).
T4. :class:`Fatal` always fails at once; :class:`Retry` always retries while attempts remain,
    even if the policy's ``retry_on`` would not; a cancelled job is never retried; a timeout
    retries when ``retry_timeouts`` says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobcast.errors import InvalidInput

#: The most runs a job may be given, by its handler or its submission (T3).
MAX_ATTEMPTS = 25
#: The longest backoff a policy may declare, and the longest ``Retry(after=...)`` honoured.
MAX_BACKOFF = 24 * 3600.0


class Retry(Exception):  # raised as an instruction, like StopIteration
    """Raised by a handler: this attempt failed, run the job again (T4).

    ``after``: seconds to wait before the next attempt; ``None``: the policy's backoff.
    """

    def __init__(self, message: str = "retry requested", *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = None if after is None else min(max(0.0, after), MAX_BACKOFF)


class Fatal(Exception):  # names the decision, not the cause
    """Raised by a handler: the job failed and must not be retried (T4)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a kind of job is retried. The default runs once."""

    max_attempts: int = 1
    #: Backoff ceiling of the first retry, in seconds; it grows by ``factor`` up to ``max`` (T1).
    initial: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    #: Exception types that retry; anything else fails at once.
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    #: Whether a run that exceeded its timeout is retried.
    retry_timeouts: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 1 to {MAX_ATTEMPTS}")
        if not (0 <= self.initial <= self.max <= MAX_BACKOFF) or self.factor < 1:
            raise ValueError(
                f"the backoff needs 0 <= initial <= max <= {MAX_BACKOFF:g} and factor >= 1"
            )

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based), with full jitter (T1)."""
        exponent = min(max(attempt - 1, 0), 64)  # bounded: factor ** 1000 overflows a float
        ceiling = min(self.max, self.initial * self.factor**exponent)
        return (rng or random).uniform(0.0, ceiling)

    def retries(self, error: BaseException) -> bool:
        """Whether an attempt that raised ``error`` may be retried (T4)."""
        if isinstance(error, Fatal):
            return False
        if isinstance(error, Retry):
            return True
        return isinstance(error, self.retry_on)


def submitted_max_attempts(value: object) -> int:
    """A submission's ``max_attempts``, validated (T3)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("max_attempts must be an integer")
    if not 1 <= value <= MAX_ATTEMPTS:
        raise InvalidInput(f"max_attempts must be between 1 and {MAX_ATTEMPTS}")
    return value
