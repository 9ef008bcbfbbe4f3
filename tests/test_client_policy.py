"""The client's I/O-free stream core and reconnect policy: dedupe, decisions, backoff."""

from __future__ import annotations

import httpx
import pytest

from jobcast.client import (
    AuthError,
    ConnectionFailed,
    Event,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    Reauth,
    ReconnectPolicy,
    Reset,
    ServerUnavailable,
)
from jobcast.client._errors import status_error
from jobcast.client._stream import StreamState

POLICY = ReconnectPolicy(initial_delay=1.0, max_delay=8.0)


def frame(event: str, data: str, id: str | None = None) -> str:
    return (f"id: {id}\n" if id else "") + f"event: {event}\ndata: {data}\n\n"


def test_duplicates_are_dropped_across_connections() -> None:
    state = StreamState(POLICY, job=False)
    state.connecting()
    first = state.feed("retry: 3000\n\n" + frame("a", "1", "e-1") + frame("a", "2", "e-2"))
    assert [item.id for item in first if isinstance(item, Event)] == ["e-1", "e-2"]
    assert state.ended(None, opened=True) >= 3.0  # R2: the server's retry is a floor
    assert state.connecting()["Last-Event-ID"] == "e-2"
    again = state.feed(frame("a", "2", "e-2") + frame("a", "3", "e-3"))
    assert [item.id for item in again if isinstance(item, Event)] == ["e-3"]


def test_snapshots_are_never_dropped_and_terminal_ends_a_job_stream() -> None:
    state = StreamState(POLICY, job=True)
    state.connecting()
    items = state.feed(
        frame("snapshot", '{"id": "j"}', "e-5") + frame("succeeded", '{"id": "j"}', "e-5")
    )
    assert [item.type for item in items if isinstance(item, Event)] == ["snapshot", "succeeded"]
    assert state.finished
    assert state.ended(None, opened=True) == 0.0


def test_reset_and_reauth_become_notices() -> None:
    state = StreamState(POLICY, job=False, last_event_id="old-1")
    state.connecting()
    items = state.feed(
        frame("reset", '{"reason": "trimmed", "last_event_id": "old-1"}', "e-9")
        + 'event: reauth\ndata: {"reason":"credential_expired"}\n\n'
    )
    assert items == [Reset("e-9", "trimmed", "old-1"), Reauth("credential_expired")]
    assert state.last_event_id == "e-9"
    renewed = {"Authorization": "Bearer new"}
    assert state.ended(None, opened=True, credentials=lambda: renewed) == 0.0  # R5: at once


REAUTH = 'event: reauth\ndata: {"reason":"credential_expired"}\n\n'


def test_a_reauth_without_a_new_token_backs_off_then_raises() -> None:
    old = {"Authorization": "Bearer old"}
    state = StreamState(POLICY, job=False)
    assert state.connecting(old)["Authorization"] == "Bearer old"
    state.feed("retry: 3000\n\n" + REAUTH)
    assert state.ended(None, opened=True, credentials=lambda: old) >= 3.0  # R5: backs off
    state.connecting(old)
    state.feed(REAUTH)
    with pytest.raises(AuthError) as caught:
        state.ended(None, opened=True, credentials=lambda: old)
    assert caught.value.reason == "token_expired"


def test_a_token_renewed_while_backing_off_starts_the_count_again() -> None:
    state = StreamState(POLICY, job=False)
    state.connecting({"Authorization": "Bearer old"})
    state.feed("retry: 3000\n\n" + REAUTH)
    assert state.ended(None, opened=True) >= 3.0  # no credentials given: unchanged
    new = {"Authorization": "Bearer new"}
    state.connecting(new)
    assert state.stale_reauths == 0
    state.feed(REAUTH)  # the new one expires in its turn
    assert state.ended(None, opened=True, credentials=lambda: new) >= 3.0  # not raised


def error(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Exception:
    response = httpx.Response(status, headers=headers)
    return status_error(response, body)


def test_errors_that_retrying_cannot_fix_end_the_stream() -> None:
    for status, kind in ((401, AuthError), (404, NotFoundError)):
        state = StreamState(POLICY, job=False)
        state.connecting()
        with pytest.raises(kind):
            state.ended(error(status), opened=False)


def test_rate_limits_wait_at_least_retry_after() -> None:
    limited = error(429, b'{"error": "rate_limited", "message": "slow"}', {"retry-after": "7"})
    assert isinstance(limited, RateLimitedError)
    assert limited.retry_after == 7.0
    state = StreamState(POLICY, job=False)
    state.connecting()
    assert state.ended(limited, opened=False) >= 7.0


def test_backoff_is_full_jitter_with_a_cap() -> None:
    policy = ReconnectPolicy(initial_delay=1.0, max_delay=4.0, honour_server_retry=False)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)):
        samples = [policy.delay(failures, 9000) for _ in range(200)]
        assert all(0.0 <= sample <= ceiling for sample in samples)
        assert max(samples) > ceiling / 2  # spread over the whole range, not a fixed step


def test_job_streams_poll_when_the_server_answers_but_streams_fail() -> None:
    state = StreamState(ReconnectPolicy(max_stream_failures=2), job=True)
    state.connecting()
    state.ended(ConnectionFailed("refused"), opened=False)  # unreachable: not a reason to poll
    state.connecting()
    state.ended(ServerUnavailable(503, "unavailable", "draining"), opened=False)
    assert not state.polling
    state.connecting()
    state.ended(None, opened=True)
    assert not state.polling
    state.connecting()
    state.ended(None, opened=True)
    assert state.polling
    buffered = StreamState(POLICY, job=True)
    buffered.connecting()
    buffered.ended(None, opened=True, first_byte_timeout=True)
    assert buffered.polling
    subscription = StreamState(POLICY, job=False)
    subscription.connecting()
    subscription.ended(None, opened=True, first_byte_timeout=True)
    assert not subscription.polling  # nothing to poll: keep reconnecting


def test_max_attempts_gives_up() -> None:
    state = StreamState(ReconnectPolicy(max_attempts=2, initial_delay=0.0), job=False)
    state.connecting()
    state.ended(ConnectionFailed("refused"), opened=False)
    state.connecting()
    with pytest.raises(ConnectionFailed):
        state.ended(ConnectionFailed("refused"), opened=False)


def test_a_first_connection_that_fails_gives_up_at_once_when_asked() -> None:
    policy = ReconnectPolicy(max_first_attempts=1, initial_delay=0.0)
    for failure in (
        ConnectionFailed("refused"),
        ServerUnavailable(502, "Bad Gateway", "<html>"),
        ProtocolError("answered 200 with application/json, not an event stream"),
    ):
        state = StreamState(policy, job=True)
        state.connecting()
        with pytest.raises(type(failure)):
            state.ended(failure, opened=isinstance(failure, ProtocolError))
    # A buffering proxy (R3) and a rate limit are not a wrong --url: keep going.
    buffered = StreamState(policy, job=True)
    buffered.connecting()
    buffered.ended(ConnectionFailed("read timed out"), opened=False, first_byte_timeout=True)
    assert buffered.polling
    limited = StreamState(policy, job=False)
    limited.connecting()
    assert limited.ended(error(429, headers={"retry-after": "1"}), opened=False) >= 1.0


def test_once_connected_a_stream_retries_a_lost_server_for_ever() -> None:
    state = StreamState(ReconnectPolicy(max_first_attempts=1, initial_delay=0.0), job=False)
    state.connecting()
    state.feed("retry: 1000\n\n: ping\n\n")
    state.ended(ConnectionFailed("connection reset"), opened=True)  # the server was killed
    for _ in range(5):  # then refused while it restarts
        state.connecting()
        state.ended(ConnectionFailed("refused"), opened=False)
    assert state.failures == 6
