"""A submission's scheduling options, validated once for JSON and multipart bodies alike.

``priority`` (``schedule.MIN_PRIORITY..MAX_PRIORITY``), ``delay_seconds`` or ``run_at`` (an
ISO 8601 time with its offset), and ``max_attempts`` (retry.T3); ``tags`` (``tags.py``) and
initial ``metadata`` (``metadata.py``). Multipart fields arrive as text and are read with the
same rules (``tags`` and ``metadata`` as JSON text).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from jobcast.errors import InvalidInput
from jobcast.jobs.metadata import validate_metadata
from jobcast.jobs.retry import submitted_max_attempts
from jobcast.jobs.schedule import MAX_PRIORITY, MIN_PRIORITY
from jobcast.jobs.tags import validate_tags

#: The furthest ahead a job may be scheduled.
MAX_DELAY = 30 * 24 * 3600.0
#: The fields this module reads from a submission.
FIELDS = frozenset({"priority", "delay_seconds", "run_at", "max_attempts", "tags", "metadata"})


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    priority: int = 0
    #: Epoch seconds; ``None``: start as soon as a slot is free.
    scheduled_for: float | None = None
    #: ``None``: the handler's policy decides.
    max_attempts: int | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None


def parse_options(fields: Mapping[str, Any], *, as_text: bool = False) -> SubmitOptions:
    """Read the options in ``fields`` (a JSON object, or multipart fields with ``as_text``)."""
    values = {name: fields[name] for name in FIELDS if name in fields}
    if as_text:
        values = {name: _from_text(name, value) for name, value in values.items()}
    priority = values.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidInput("priority must be an integer")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    if "delay_seconds" in values and "run_at" in values:
        raise InvalidInput("send delay_seconds or run_at, not both")
    scheduled_for = None
    now = time.time()
    if "delay_seconds" in values:
        delay = values["delay_seconds"]
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            raise InvalidInput("delay_seconds must be a number")
        if not 0 <= delay <= MAX_DELAY:
            raise InvalidInput(f"delay_seconds must be between 0 and {MAX_DELAY:g}")
        scheduled_for = now + delay if delay > 0 else None
    elif "run_at" in values:
        scheduled_for = _run_at(values["run_at"], now)
    attempts = values.get("max_attempts")
    return SubmitOptions(
        priority,
        scheduled_for,
        None if attempts is None else submitted_max_attempts(attempts),
        tuple(validate_tags(values.get("tags"))),
        validate_metadata(values.get("metadata")) or None,
    )


def _run_at(value: Any, now: float) -> float | None:
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput("run_at must be an ISO 8601 time, such as 2030-01-01T12:00:00Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            "run_at must be an ISO 8601 time, such as 2030-01-01T12:00:00Z"
        ) from None
    if when.tzinfo is None:  # a bare time is ambiguous across the client's and server's zones
        raise InvalidInput("run_at needs a time zone offset (Z or +HH:MM)")
    at = when.timestamp()
    if at > now + MAX_DELAY:
        raise InvalidInput(f"run_at is more than {MAX_DELAY / 86400:g} days ahead")
    return at if at > now else None  # a time already past: now


def _from_text(name: str, value: Any) -> Any:
    if name == "run_at" or not isinstance(value, str):
        return value
    if name in ("tags", "metadata"):  # JSON text in a form field
        try:
            return orjson.loads(value) if value.strip() else None
        except orjson.JSONDecodeError:
            raise InvalidInput(f"{name} must be JSON text") from None
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    if name == "delay_seconds":
        try:
            return float(text)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a number")
