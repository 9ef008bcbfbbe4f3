"""The SSE wire format, byte for byte, and the WHATWG decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobcast.events import Event
from jobcast.wire import HEARTBEAT, ServerSentEvent, SSEDecoder, retry_frame


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ServerSentEvent(data="hello"), b"data: hello\n\n"),
        (ServerSentEvent(data=""), b"data: \n\n"),
        (
            ServerSentEvent(data="a", event="video.status", id="e1-7"),
            b"id: e1-7\nevent: video.status\ndata: a\n\n",
        ),
        (ServerSentEvent(data="line1\nline2"), b"data: line1\ndata: line2\n\n"),
        (ServerSentEvent(data="a\r\nb\rc\n"), b"data: a\ndata: b\ndata: c\ndata: \n\n"),
        (ServerSentEvent(retry=2500), b"retry: 2500\n\n"),
        (ServerSentEvent(comment="ping"), b": ping\n\n"),
        (ServerSentEvent(comment="two\nlines"), b": two\n: lines\n\n"),
        (
            ServerSentEvent(data="{}", event="reset", id="x-0", retry=10),
            b"id: x-0\nevent: reset\nretry: 10\ndata: {}\n\n",
        ),
        (ServerSentEvent(data="ünï€ode"), "data: ünï€ode\n\n".encode()),
    ],
)
def test_encode_is_byte_exact(event: ServerSentEvent, expected: bytes) -> None:
    assert event.encode() == expected


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b", "\n"])
@pytest.mark.parametrize("field", ["id", "event"])
def test_line_breaks_and_nul_cannot_reach_id_or_event(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        ServerSentEvent(data="x", **{field: bad}).encode()


def test_heartbeat_and_retry_frames() -> None:
    assert HEARTBEAT == b": ping\n\n"
    assert retry_frame(3000) == b"retry: 3000\n\n"
    with pytest.raises(ValueError, match="non-negative"):
        retry_frame(-1)


def test_event_frame_matches_the_generic_encoder() -> None:
    event = Event("ab12", 42, "videos/1", "video.status", b'{"s":"a\\nb"}')
    generic = ServerSentEvent(data='{"s":"a\\nb"}', event="video.status", id="ab12-42")
    assert event.sse_frame == generic.encode()
    assert event.sse_frame is event.sse_frame  # encoded once, then shared


def test_decoder_follows_whatwg_examples() -> None:
    decoder = SSEDecoder()
    events = decoder.feed("data: YHOO\ndata: +2\ndata: 10\n\n: comment\n\nevent: x\ndata\n\n")
    assert [e.data for e in events] == ["YHOO\n+2\n10", ""]
    assert events[1].event == "x"
    assert events[0].event == "message"


def test_decoder_handles_every_line_ending_and_any_chunking() -> None:
    text = "\ufeffid: 1\r\nevent: a\r\ndata: x\r\n\r\nid: 2\rdata: y\r\rdata: z\n\n"
    whole = SSEDecoder().feed(text)
    for size in (1, 2, 3, 7):
        decoder = SSEDecoder()
        pieces = [decoder.feed(text[i : i + size]) for i in range(0, len(text), size)]
        assert [e for piece in pieces for e in piece] == whole
    assert [(e.id, e.event, e.data) for e in whole] == [
        ("1", "a", "x"),
        ("2", "message", "y"),
        ("2", "message", "z"),  # the last event id carries over, as in a browser
    ]


def test_decoder_ignores_ids_with_nul_and_keeps_retry() -> None:
    decoder = SSEDecoder()
    (event,) = decoder.feed("id: a\0b\nretry: 1500\nretry: x\ndata: d\n\n")
    assert event.id is None
    assert decoder.retry == 1500


def test_decoder_can_report_comments() -> None:
    decoder = SSEDecoder(keep_comments=True)
    assert decoder.feed(": ping\n\n") == [ServerSentEvent(comment="ping")]


@given(
    data=st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r")),
    event=st.from_regex(r"[A-Za-z0-9_.:/-]{1,20}", fullmatch=True),
    id_=st.from_regex(r"[a-z0-9]{1,8}-[0-9]{1,6}", fullmatch=True),
)
def test_encode_then_decode_round_trips(data: str, event: str, id_: str) -> None:
    frame = ServerSentEvent(data=data, event=event, id=id_).encode().decode()
    (decoded,) = SSEDecoder().feed(frame)
    assert (decoded.data, decoded.event, decoded.id) == (data, event, id_)


def test_decoder_ignores_a_retry_that_is_not_ascii_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed("retry: 1500\nretry: \u00b2\nretry: \uff11\uff12\nretry: " + "9" * 5000 + "\n\n")
    assert decoder.retry == 1500
