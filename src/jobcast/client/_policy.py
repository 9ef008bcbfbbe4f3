"""How streams reconnect: one small, immutable policy object shared by both clients.

Decisions (cited as R1..R6):

R1. Backoff is exponential with full jitter and a cap: the n-th consecutive failure waits a
    uniformly random time in ``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]``, so
    clients that lost the same server do not come back in lockstep.
R2. The server's ``retry:`` hint is a floor, not a suggestion: a draining server spreads its
    clients' reconnects with randomised hints, and reconnecting earlier would defeat that. An
    absurd hint is clamped to ``max_server_retry``.
R3. A job stream that is impossible falls back to polling ``GET /api/jobs/{id}``: no first
    byte within ``first_byte_timeout`` (a proxy that buffers the response), or
    ``max_stream_failures`` attempts in a row that reached the server yet delivered nothing.
    An unreachable server is not such a case: it is retried. Hub subscriptions have nothing
    to poll and keep reconnecting.
R4. Errors that a retry cannot fix (401, 403, 404, 422) end the stream at once; 429 waits at
    least the server's ``Retry-After``; transport errors and 5xx are retried with backoff
    (forever unless ``max_attempts`` is set; R6 may end a first connection sooner). An answer
    that is not an event stream (a server that is not jobcast) counts as reaching the server
    yet delivering nothing (R3), never as a healthy stream.
R5. After ``reauth`` the stream resumes at once if the token changed (the caller renewed it on
    the notice). With the same token it backs off like a failure, and ``max_stale_reauths``
    in a row end it with ``AuthError``: a server that still accepts an expired token for its
    clock-skew leeway would otherwise be asked again and again, with no pause, until the
    leeway ran out.
R6. A stream that has never connected may be given up on sooner than one that has: with
    ``max_first_attempts`` set, that many failed attempts in a row before the first byte of
    an event stream (the server unreachable, a 5xx, an answer that is not an event stream)
    raise the error. A first byte that does not come in time is R3's case, not this one, but
    the polls that follow it count the same way until one succeeds (a server that accepts
    connections and never answers). Off by default: a program may well start before its
    server does. The CLI sets 1, so that a wrong ``--url`` is reported at once while a
    server restart later is still waited for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """The knobs of stream reconnection and polling; every one has a default that works."""

    #: Upper bound of the first jittered wait, in seconds (R1).
    initial_delay: float = 0.5
    #: Cap of the jittered wait, in seconds (R1).
    max_delay: float = 30.0
    multiplier: float = 2.0
    #: Wait at least the server's ``retry:`` hint before reconnecting (R2).
    honour_server_retry: bool = True
    max_server_retry: float = 60.0
    #: Seconds to wait for the first byte of a stream before deciding it is buffered (R3).
    first_byte_timeout: float = 10.0
    #: Seconds of silence after which a stream is presumed dead; servers send a heartbeat
    #: every 15 s by default, so this allows two to go missing.
    read_timeout: float = 45.0
    #: Consecutive attempts that delivered nothing before a job stream falls back to polling.
    max_stream_failures: int = 3
    #: Seconds between polls once a job is being polled.
    poll_interval: float = 1.0
    #: Consecutive failed attempts before giving up; ``None`` retries forever (R4).
    max_attempts: int | None = None
    #: Failed attempts in a row, before the stream ever connected, that give up at once;
    #: ``None``: only ``max_attempts`` applies (R6).
    max_first_attempts: int | None = None
    #: ``reauth`` notices in a row with an unchanged token before ``AuthError`` (R5).
    max_stale_reauths: int = 2
    #: How many event ids are remembered to drop duplicates after a resume.
    dedupe_window: int = 10_000

    def delay(self, failures: int, server_retry_ms: int | None) -> float:
        """Seconds to wait before the next attempt after ``failures`` consecutive failures."""
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, failures - 1))
        wait = random.uniform(0.0, ceiling)  # R1: full jitter
        if self.honour_server_retry and server_retry_ms is not None:  # R2
            wait = max(wait, min(server_retry_ms / 1000.0, self.max_server_retry))
        return wait
