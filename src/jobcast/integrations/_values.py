"""What a task's arguments, result and error become in its job: JSON, or a bounded text.

Decisions (cited as V1..V3):

V1. Arguments that are JSON become the params ``{"args": [...], "kwargs": {...}}`` as they
    are; anything else (a ``datetime``, a model instance) becomes
    ``{"repr": "<truncated repr>", "not_json": true}``: the job still exists and says so.
V2. A result that is not JSON is recorded as its ``repr``, truncated: the task succeeded.
V3. An error is its type's name and its message, truncated; never a traceback, whose frames
    may carry local values (secrets, personal data) to everyone who may read the job.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Longest text kept of a repr or an error message (V1-V3).
MAX_TEXT = 2000
#: Largest JSON params or result kept as JSON; past it, the truncated repr (V1, V2).
MAX_JSON_BYTES = 32 * 1024


def _truncated(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _as_json(value: Any) -> Any | None:
    """``value`` if it is JSON (and small enough), else ``None``."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        return None
    if len(encoded) > MAX_JSON_BYTES:
        return None
    # Round trip: a tuple becomes a list, as every reader of the job will see it.
    return orjson.loads(encoded)


def params_of(args: Any, kwargs: Any) -> dict[str, Any]:
    """A task's arguments as a job's params (V1)."""
    value = {"args": list(args or ()), "kwargs": dict(kwargs or {})}
    as_json = _as_json(value)
    if isinstance(as_json, dict):
        return as_json
    return {"repr": _truncated(repr((tuple(args or ()), dict(kwargs or {})))), "not_json": True}


def result_of(value: Any) -> Any:
    """A task's return value as a job's result (V2)."""
    if value is None:
        return None
    as_json = _as_json(value)
    return as_json if as_json is not None else _truncated(repr(value))


def error_of(exc: BaseException | None, fallback: str = "Error") -> dict[str, str]:
    """An exception as a job's error: type and message only (V3)."""
    if exc is None:
        return {"type": fallback, "message": ""}
    return {"type": type(exc).__name__, "message": _truncated(str(exc))}
