"""The I/O-free core of a reconnecting stream, driven by both clients' read loops.

The twins open connections and read bytes; this class decides everything else: the
``Last-Event-ID`` to resume from, which frames become which items, which events are duplicates
(D1), when the stream is over, and how long to wait or whether to poll after a connection ends
(``_policy`` R1..R5).

D1. Duplicates are dropped by id: a bounded window of recently seen ids. A job's ``snapshot``
    is a state, not an event, and carries the id of the newest event it reflects, which the
    terminal event of a finished job shares; snapshots are therefore never dropped nor
    recorded.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from jobcast.client._errors import (
    AuthError,
    ClientError,
    ConnectionFailed,
    HTTPStatusError,
    ProtocolError,
    RateLimitedError,
    ServerUnavailable,
)
from jobcast.client._models import Event, Reauth, Reset, StreamItem
from jobcast.client._policy import ReconnectPolicy
from jobcast.wire import SSEDecoder


class StreamState:
    """One logical stream across any number of connections."""

    def __init__(
        self, policy: ReconnectPolicy, *, job: bool, last_event_id: str | None = None
    ) -> None:
        self.policy = policy
        #: A job stream ends after its terminal event and may fall back to polling (R3).
        self.job = job
        self.last_event_id = last_event_id
        self.server_retry_ms: int | None = None
        self.finished = False
        self.polling = False
        self.failures = 0
        #: Consecutive attempts that reached the server yet delivered nothing (R3).
        self.stream_failures = 0
        self.attempts = 0
        #: Whether any connection has delivered a byte of an event stream (R6).
        self.connected = False
        #: ``reauth`` notices in a row answered with an unchanged token (R5).
        self.stale_reauths = 0
        self._credentials: dict[str, str] = {}
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._decoder = SSEDecoder()
        self._got_bytes = False
        self._got_event = False
        self._reauth = False

    # -- one connection ------------------------------------------------------------------

    def connecting(self, credentials: Mapping[str, str] | None = None) -> dict[str, str]:
        """Start a connection with ``credentials`` (auth headers); returns the headers to send."""
        self.attempts += 1
        self._decoder = SSEDecoder()
        self._got_bytes = self._got_event = self._reauth = False
        credentials = dict(credentials or {})
        if credentials != self._credentials:
            self.stale_reauths = 0  # renewed, perhaps while we backed off (R5)
        self._credentials = credentials
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return {**headers, **credentials}

    @property
    def got_bytes(self) -> bool:
        """Whether the current connection has delivered anything at all (R3's first byte)."""
        return self._got_bytes

    def feed(self, text: str) -> list[StreamItem]:
        """Decode a chunk of the current connection into the items to yield."""
        if text:
            self._got_bytes = self.connected = True
        items: list[StreamItem] = []
        for frame in self._decoder.feed(text):
            if self._decoder.retry is not None:
                self.server_retry_ms = self._decoder.retry
            data = _loads(frame.data)
            if frame.event == "reset":
                info = data if isinstance(data, dict) else {}
                self.last_event_id = frame.id or self.last_event_id
                items.append(
                    Reset(frame.id, str(info.get("reason", "")), info.get("last_event_id"))
                )
                self._got_event = True
            elif frame.event == "reauth":
                info = data if isinstance(data, dict) else {}
                self._reauth = True
                items.append(Reauth(str(info.get("reason", "credential_expired"))))
            elif self.finished:
                break  # nothing after a job's terminal event belongs to it
            else:
                event = Event(frame.event or "message", data, frame.id)
                if event.type != "snapshot" and not self._first_sight(frame.id):
                    continue  # D1
                if frame.id:
                    self.last_event_id = frame.id
                self._got_event = True
                if self.job and event.terminal:
                    self.finished = True
                items.append(event)
        # The decoder also reports retry hints on frames that carry no event (the opening one).
        if self._decoder.retry is not None:
            self.server_retry_ms = self._decoder.retry
        # So does it an id with no event: a fresh stream's opening carries the server's head,
        # which is where to resume if the stream is cut before its first event (as a browser).
        if self.last_event_id is None and self._decoder.last_event_id:
            self.last_event_id = self._decoder.last_event_id
        return items

    def _after_reauth(self, credentials: Callable[[], Mapping[str, str]] | None) -> float:
        # The caller was told, and may have renewed the token on the notice (R5).
        if credentials is not None and dict(credentials()) != self._credentials:
            self.stale_reauths = 0
            return 0.0
        self.stale_reauths += 1
        if self.stale_reauths >= self.policy.max_stale_reauths:
            raise AuthError(
                401,
                "unauthorized",
                "the token expired and no new one was given (assign client.token on Reauth)",
                reason="token_expired",
            )
        return self.policy.delay(self.stale_reauths, self.server_retry_ms)

    def _gives_up_first(
        self, error: BaseException | None, first_byte_timeout: bool
    ) -> TypeGuard[ClientError]:
        """Whether a stream that never connected has failed ``max_first_attempts`` times (R6)."""
        limit = self.policy.max_first_attempts
        if limit is None or self.connected or first_byte_timeout:
            return False
        unusable = isinstance(error, (ConnectionFailed, ServerUnavailable, ProtocolError))
        return unusable and self.failures >= limit

    def poll_failed(self, error: ClientError, failures: int) -> None:
        """A job's poll failed, ``failures`` times in a row: raise if it never connected (R6)."""
        limit = self.policy.max_first_attempts
        if limit is not None and not self.connected and failures >= limit:
            raise error

    def _first_sight(self, event_id: str | None) -> bool:
        if not event_id:
            return True
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.policy.dedupe_window:
            self._seen.discard(self._order.popleft())
        return True

    def ended(
        self,
        error: BaseException | None,
        *,
        opened: bool,
        first_byte_timeout: bool = False,
        credentials: Callable[[], Mapping[str, str]] | None = None,
    ) -> float:
        """The current connection is over: seconds to wait before the next one.

        ``opened`` says the server answered 200 (an unreachable server is not a reason to
        poll). Raises the error when retrying cannot help (R4); sets ``polling`` when a job
        stream should fall back to polling (R3); returns 0 once ``finished``. After a
        ``reauth``, ``credentials()`` gives the auth headers the next connection would send
        (without it, the token counts as unchanged) (R5).
        """
        if self.finished:
            return 0.0
        if isinstance(error, HTTPStatusError) and not isinstance(
            error, (ServerUnavailable, RateLimitedError)
        ):
            raise error
        if self._reauth:
            self.failures = 0
            return self._after_reauth(credentials)
        if self._got_event or (self._got_bytes and error is None):
            self.failures = self.stream_failures = 0
            return self.policy.delay(0, self.server_retry_ms)
        self.failures += 1
        if opened or first_byte_timeout:
            self.stream_failures += 1
        else:
            self.stream_failures = 0
        if self._gives_up_first(error, first_byte_timeout):
            raise error
        if self.job and (
            first_byte_timeout or self.stream_failures >= self.policy.max_stream_failures
        ):
            self.polling = True
            return 0.0
        limit = self.policy.max_attempts
        if limit is not None and self.failures >= limit:
            if isinstance(error, ClientError):
                raise error
            raise ConnectionFailed(f"the stream failed {self.failures} times in a row")
        wait = self.policy.delay(self.failures, self.server_retry_ms)
        if isinstance(error, RateLimitedError):
            wait = max(wait, error.retry_after)
        return wait


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # events are JSON by contract; show anything else as it came
