"""What a task's arguments, result and error become in its job (``integrations/_values.py``)."""

from __future__ import annotations

import datetime

import pytest

from jobcast.integrations._values import MAX_TEXT, error_of, params_of, result_of


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


def test_json_arguments_are_params_as_they_are() -> None:
    assert params_of((1, "a", [2]), {"k": {"n": None}}) == {
        "args": [1, "a", [2]],
        "kwargs": {"k": {"n": None}},
    }
    assert params_of(None, None) == {"args": [], "kwargs": {}}


def test_other_arguments_are_a_flagged_truncated_repr() -> None:
    assert params_of((Opaque(),), {}) == {"repr": "((Opaque(),), {})", "not_json": True}
    huge = params_of(("x" * 100_000,), {})
    assert huge["not_json"] is True and len(huge["repr"]) == MAX_TEXT


def test_a_result_that_is_not_json_is_its_repr() -> None:
    assert result_of({"words": 3}) == {"words": 3}
    assert result_of((1, 2)) == [1, 2]  # as every reader will see it
    assert result_of({5}) == "{5}"
    assert result_of(None) is None
    assert result_of(datetime.date(2026, 1, 2)) == "2026-01-02"  # orjson's own encoding


def test_an_error_is_its_type_and_message_only() -> None:
    secret = "hunter2"
    with pytest.raises(ValueError, match="bad") as caught:
        raise ValueError(f"bad ({len(secret)})")
    assert error_of(caught.value) == {"type": "ValueError", "message": "bad (7)"}
    assert error_of(None, "Retry") == {"type": "Retry", "message": ""}
    assert len(error_of(RuntimeError("x" * 10_000))["message"]) == MAX_TEXT
