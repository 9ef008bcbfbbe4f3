"""Every parser at the edge, fed anything: it returns a value or raises the documented error
(``InvalidInput`` or ``Unauthorized``, both ``JobcastError``), never another exception.

Arbitrary text here means all of Unicode (lone surrogates included where a ``str`` can hold
them), control characters and sizes past every limit. Example counts are bounded so the file
runs in seconds; ``derandomize`` keeps a failure reproducible.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from jobcast.auth import CREDENTIAL_EXP, SESSION, TICKET, Principal, TokenAuthority
from jobcast.errors import InvalidInput, Unauthorized
from jobcast.events import MAX_ID_LENGTH, MAX_POSITION, EventId
from jobcast.topics import TopicPattern, parse_patterns, validate_topic
from jobcast.wire import ServerSentEvent, SSEDecoder
from tests.support import SECRET, LiveServer

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Anything a ``str`` can hold, lone surrogates included.
ANY_TEXT = st.text(st.characters(codec=None), max_size=300)
HUGE = ["9" * 5000, "x" * 100_000, "\x00" * 1000, "\u00b2" * 50, "-" * 10_000]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


# -- event ids -----------------------------------------------------------------------------


@BOUNDED
@given(ANY_TEXT)
@example("x-\u00b2")
@example("x-\uff11\uff12")
@example("x-" + "9" * 5000)
def test_event_ids_parse_to_an_id_or_none(text: str) -> None:
    parsed = EventId.parse(text)
    if parsed is not None:
        assert len(text) <= MAX_ID_LENGTH and 0 <= parsed.position <= MAX_POSITION
        assert str(parsed) == text.rpartition("-")[0] + "-" + str(parsed.position)


@BOUNDED
@given(st.text(min_size=1, max_size=40), st.integers(0, MAX_POSITION))
def test_every_id_we_send_parses_back(epoch: str, position: int) -> None:
    sent = EventId(epoch, position)
    if len(str(sent)) <= MAX_ID_LENGTH:
        assert EventId.parse(str(sent)) == sent


# -- topics and patterns ---------------------------------------------------------------------


def value_or_invalid(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except InvalidInput:
        return None


@BOUNDED
@given(ANY_TEXT | st.sampled_from(HUGE))
@example("a/*/b")
@example("../a")
@example("a/" * 200)
def test_topics_and_patterns_parse_or_are_invalid_input(text: str) -> None:
    topic = value_or_invalid(lambda: validate_topic(text))
    pattern = value_or_invalid(lambda: TopicPattern.parse(text))
    if topic is not None:
        assert pattern is not None and pattern.matches(text)
    if pattern is not None:
        assert "\x00" not in text and "\n" not in text


@BOUNDED
@given(st.lists(ANY_TEXT, max_size=60), st.integers(1, 50))
def test_pattern_lists_parse_or_are_invalid_input(texts: list[str], limit: int) -> None:
    patterns = value_or_invalid(lambda: parse_patterns(texts, limit=limit))
    if patterns is not None:
        assert 1 <= len(patterns) <= limit


# -- the SSE decoder -----------------------------------------------------------------------


@BOUNDED
@given(st.lists(ANY_TEXT | st.sampled_from(["\r", "\n", "\r\n", ":", "retry: "]), max_size=20))
@example(["retry: " + "9" * 5000 + "\n"])
@example(["retry: \u00b2\n", "id: a\x00\n", "data: x\r", "\n"])
def test_the_decoder_takes_any_chunks(chunks: list[str]) -> None:
    decoder = SSEDecoder(keep_comments=True)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            assert isinstance(event, ServerSentEvent)
    assert decoder.retry is None or decoder.retry >= 0
    assert "\x00" not in (decoder.last_event_id or "")


@BOUNDED
@given(st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=200))
def test_a_frame_split_anywhere_decodes_the_same(data: str) -> None:
    frame = ServerSentEvent(data=data, event="t", id="e-1").encode().decode("utf-8", "replace")
    whole = SSEDecoder().feed(frame)
    for cut in {0, len(frame) // 3, len(frame) // 2, len(frame) - 1}:
        decoder = SSEDecoder()
        parts = decoder.feed(frame[:cut]) + decoder.feed(frame[cut:])
        assert [(e.data, e.event, e.id) for e in parts] == [(e.data, e.event, e.id) for e in whole]


# -- tickets, sessions and bearer tokens --------------------------------------------------------

AUTHORITY = TokenAuthority(SECRET)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(header: Any, payload: Any) -> str:
    """A token with any header and payload, correctly signed with the server's secret: what
    only a holder of the secret could make, to reach the checks past the signature."""
    # The standard library's JSON, as an issuer's might be: integers of any size, NaN.
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    digest = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + b64(digest)


def verified_or_refused(credential: str) -> list[Any]:
    """Every verification of ``credential``: a principal, or the refusal (``Unauthorized``)."""
    results: list[Any] = []
    for verify in (
        lambda: asyncio.run(AUTHORITY.verify(credential)),
        lambda: AUTHORITY.verify_ticket(credential),
        lambda: AUTHORITY.verify_session(credential),
    ):
        try:
            results.append(verify())
        except Unauthorized as exc:
            results.append(exc)
    assert all(r.reason for r in results if isinstance(r, Unauthorized))
    return results


CLAIM_NAMES = st.sampled_from(
    ["sub", "exp", "role", "topics", "typ", "scope", "jti", "iat", "nbf", "iss", "aud", "cred_exp"]
)
CLAIM_VALUES = (
    JSON
    | st.sampled_from([TICKET, SESSION, "admin", ["a/*"], 10**30, -(10**30), 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
)


@BOUNDED
@given(ANY_TEXT | st.sampled_from(HUGE))
@example("a.b.c")
@example("eyJhbGciOiJIUzI1NiJ9..")
@example(".".join(["\u00e9"] * 3))
def test_any_text_as_a_credential_is_refused_with_a_reason(text: str) -> None:
    for result in verified_or_refused(text):
        assert isinstance(result, Unauthorized)


@BOUNDED
@given(
    header=st.fixed_dictionaries({"alg": st.sampled_from(["HS256"]) | JSON, "typ": JSON}),
    claims=st.dictionaries(CLAIM_NAMES, CLAIM_VALUES, max_size=8),
)
@example(header={"alg": []}, claims={})
@example(header={"alg": {}}, claims={})
@example(header={"alg": "HS256"}, claims={"sub": "a", "exp": 10**30})
@example(header={"alg": "HS256"}, claims={"sub": "a", "exp": 2**63, "typ": SESSION})
@example(header={"alg": "HS256"}, claims={"exp": 10**400})
@example(header={"alg": "HS256"}, claims={"exp": float("inf")})
@example(header={"alg": "HS256"}, claims={"exp": float("nan")})
@example(header={"alg": "HS256"}, claims={"iat": float("inf"), "nbf": 10**400})
@example(
    header={"alg": "HS256"},
    claims={"typ": TICKET, "jti": "j", "scope": ["a"], CREDENTIAL_EXP: 10**400},
)
def test_signed_tokens_with_any_header_and_claims_verify_or_are_refused(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    payload = {"sub": "someone", "exp": int(time.time()) + 3600, **claims}
    for result in verified_or_refused(signed(header, payload)):
        assert isinstance(result, Principal | Unauthorized | tuple)


# -- /ws/events messages ---------------------------------------------------------------------

OPS = st.sampled_from(["subscribe", "unsubscribe", "ack", "ping", "auth", "", "SUBSCRIBE"])
WS_MESSAGES = ANY_TEXT.map(lambda text: text.encode("utf-8", "replace").decode()) | st.builds(
    # The standard library's encoder: it writes what orjson refuses (integers past 64 bits,
    # NaN), which a client may still send.
    lambda op, extra: json.dumps({"op": op, **extra}),
    OPS,
    st.dictionaries(
        st.sampled_from(["topics", "last_event_id", "id"]),
        JSON
        | st.lists(ANY_TEXT.map(lambda t: t.encode("utf-8", "replace").decode()), max_size=5)
        | st.sampled_from([["a/*"], ["*"], "x-\u00b2", "x-" + "9" * 5000, ["a/1"] * 60]),
    ),
)


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from jobcast.server.app import create_app
    from tests.support import make_settings

    settings_ = make_settings(
        data_dir=tmp_path_factory.mktemp("ws-props"),
        ws_max_messages_per_second=100_000,
        heartbeat_interval=30,
    )
    server = LiveServer(create_app(settings_)).start()
    yield server
    server.stop()


def replies_until_pong(ws: ClientConnection, message: str) -> list[dict[str, Any]]:
    """What the server answered ``message``, up to the reply to a ping sent after it."""
    try:
        pongs = 2 if orjson.loads(message).get("op") == "ping" else 1
    except (orjson.JSONDecodeError, AttributeError):
        pongs = 1
    ws.send('{"op":"ping"}')
    replies = []
    while pongs:
        reply = orjson.loads(ws.recv(timeout=5))
        if reply.get("op") == "pong":
            pongs -= 1
        else:
            replies.append(reply)
    return replies


@BOUNDED
@given(message=WS_MESSAGES)
@example(message='{"op":"subscribe","topics":["a/1"],"last_event_id":"x-\u00b2"}')
@example(message='{"op":"ack","id":"x-\uff11"}')
@example(message="[1, 2]")
@example(message="\x00")
def test_any_events_socket_message_gets_an_answer_and_the_socket_stays_open(
    ws_server: LiveServer, message: str
) -> None:
    url = f"ws://{ws_server.host}:{ws_server.port}/ws/events?client_id=p&token="
    with connect(url + ws_server.token("prop", "admin")) as ws:
        ws.send(message)
        for reply in replies_until_pong(ws, message):
            assert reply.get("op") in {"error", "subscribed", "unsubscribed", "reset", "ping"}, (
                reply
            )
        ws.send('{"op":"subscribe","topics":["still/open"]}')
        assert orjson.loads(ws.recv(timeout=5))["op"] == "subscribed"
