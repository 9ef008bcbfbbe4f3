from __future__ import annotations

import pytest

from jobcast.errors import InvalidInput
from jobcast.events import EventDraft, EventId, validate_type
from jobcast.topics import TopicPattern, parse_patterns, validate_topic, wildcard_prefixes


@pytest.mark.parametrize(
    "topic", ["jobs/8f3c", "videos/42", "workitems", "a.b/c-d_e:f@g", "x" * 200]
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "/",
        "a/",
        "/a",
        "a//b",
        "jobs/../x",
        "../x",
        "a/./b",
        "..",
        "a b",
        "a\nb",
        "ä",
        "x" * 201,
        "a/*",
    ],
)
def test_invalid_topics_are_rejected(topic: str) -> None:
    with pytest.raises(InvalidInput):
        validate_topic(topic)


def test_patterns() -> None:
    assert TopicPattern.parse("jobs/*").prefix == "jobs/"
    assert TopicPattern.parse("*").prefix == ""
    assert TopicPattern.parse("jobs/1").prefix is None
    wildcard = TopicPattern.parse("jobs/*")
    assert wildcard.matches("jobs/1")
    assert wildcard.matches("jobs/1/sub")
    assert not wildcard.matches("jobs")
    assert not wildcard.matches("jobsx/1")
    for bad in ["jobs*", "*/jobs", "jobs/*/x", "**", "jobs/../*"]:
        with pytest.raises(InvalidInput):
            TopicPattern.parse(bad)


def test_parse_patterns_limits_and_dedupes() -> None:
    assert len(parse_patterns(["a", "a", "b/*"], limit=3)) == 2
    with pytest.raises(InvalidInput, match="at most 2"):
        parse_patterns(["a", "b", "c"], limit=2)
    with pytest.raises(InvalidInput, match="at least one"):
        parse_patterns([], limit=2)


def test_wildcard_prefixes() -> None:
    assert wildcard_prefixes("a/b/c") == ["", "a/", "a/b/"]
    assert wildcard_prefixes("a") == [""]


@pytest.mark.parametrize("bad", ["", "a b", "reset", "reauth", "a\nb", "x" * 65])
def test_event_types_are_validated(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate_type(bad)


def test_event_ids_parse_only_our_format() -> None:
    assert EventId.parse("ab12-42") == EventId("ab12", 42)
    assert str(EventId("ab12", 42)) == "ab12-42"
    for bad in ["", "42", "-42", "ab-", "ab-x", "ab-" + "9" * 20]:
        assert EventId.parse(bad) is None


def test_draft_data_must_be_json() -> None:
    assert EventDraft.create("a", "t", {"x": [1, None]}).data_json == b'{"x":[1,null]}'
    with pytest.raises(InvalidInput, match="JSON"):
        EventDraft.create("a", "t", {"x": object()})
