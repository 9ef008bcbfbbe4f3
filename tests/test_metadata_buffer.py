"""``MetadataBuffer``'s one-key fast path (metadata.M5) checks and counts as the whole path does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from jobcast.errors import InvalidInput
from jobcast.jobs.metadata import MetadataBuffer


def test_sizes_stay_those_of_the_encoded_object_through_every_kind_of_update() -> None:
    buffer = MetadataBuffer({"source": "upload", "pages": 0})
    updates: list[Callable[[MetadataBuffer], None]] = [
        lambda b: b.increment("pages"),
        lambda b: b.increment("pages", 2.5),
        lambda b: b.set("name", 'quote " and é'),
        lambda b: b.set("flag", True),
        lambda b: b.set("none", None),
        lambda b: b.set("big", 2**62),
        lambda b: b.set("nan", float("nan")),  # JSON has no NaN: it becomes null
        lambda b: b.append("files", {"name": "a.wav"}),
        lambda b: b.append("files", "b.wav"),
        lambda b: b.merge({"x": [1, 2], "pages": 7}),
        lambda b: b.remove("flag"),
        lambda b: b.set("source", {"nested": ["ok"]}),
    ]
    for update in updates:
        update(buffer)
        encoded = orjson.dumps(buffer.values)
        assert buffer.size in (len(encoded), len(encoded) + 1)  # give or take a comma
        assert orjson.loads(encoded) == buffer.values  # what JSON gives back
    assert buffer.values["nan"] is None and buffer.values["pages"] == 7


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (lambda b: b.set("", 1), "a metadata key must be"),
        (lambda b: b.set("k" * 129, 1), "a metadata key must be"),
        (lambda b: b.increment(5), "a metadata key must be"),
        (lambda b: b.increment("name"), "is not a number"),
        (lambda b: b.increment("n", True), "increment takes a number"),
        (lambda b: b.increment("n", float("inf")), "finite"),
        (lambda b: b.set("k", 2**70), "must be JSON"),
        (lambda b: b.set("k", object()), "must be JSON"),
        (lambda b: b.set("k", "x" * 200), "the limit is 100"),
        (lambda b: b.append("name", 1), "is not a list"),
    ],
)
def test_a_refused_one_key_update_changes_nothing(
    update: Callable[[MetadataBuffer], Any], message: str
) -> None:
    buffer = MetadataBuffer({"name": "a", "n": 1}, max_bytes=100)
    before, size = dict(buffer.values), buffer.size
    buffer.take()
    with pytest.raises(InvalidInput, match=message):
        update(buffer)
    assert buffer.values == before and buffer.size == size and not buffer.dirty


def test_a_value_is_copied_in_never_shared() -> None:
    buffer = MetadataBuffer({})
    mine = {"files": ["a"]}
    buffer.set("state", mine)
    mine["files"].append("b")  # a later change of the caller's own object is no update
    assert buffer.values["state"] == {"files": ["a"]}
    delta, removed, whole = buffer.take() or ({}, [], {})
    assert delta == {"state": {"files": ["a"]}} and removed == [] and whole == buffer.values
