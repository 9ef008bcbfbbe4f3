"""Idempotency keys of job submissions: a retried ``POST /api/jobs`` returns the job the first
one created instead of creating a second.

Decisions (cited as I1..I5):

I1. A key is scoped by its owner: the same key from two owners names two submissions. It is
    1 to ``MAX_KEY`` printable ASCII characters, from the ``Idempotency-Key`` header or the
    ``idempotency_key`` field (both may be sent only if they agree).
I2. The request is fingerprinted (SHA-256 of its kind, params as sent, scheduling fields and
    the uploaded file's digest, as canonical JSON). The same key with the same fingerprint
    within the retention window (``JOBCAST_IDEMPOTENCY_RETENTION_SECONDS``, 24 h by default)
    returns the first job with 200 and ``Idempotent-Replayed: true`` (a new job is a 202);
    with another fingerprint it is refused with a 409 that says the key was used for a
    different request.
I3. The key and its job are inserted in one transaction and the store's unique (owner, key)
    decides between concurrent submissions (``stores/sql.py`` Q7), so one key makes one job
    whatever the number of requests or server instances.
I4. Past the retention window a key is free again; deleting a job frees its keys.
I5. ``POST /api/events`` takes the ``Idempotency-Key`` header too, per publishing subject: the
    key is claimed before the events are published and records their ids after, so a retried
    publish with the same events is acknowledged with the original ids and publishes nothing,
    answered as a replayed submission is (200 and ``Idempotent-Replayed: true``, where the
    first publish was a 202);
    other events with the key are a 409, and so is a retry while the first is still under way
    (it is answered once that one has its ids). A publish that failed frees its key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from jobcast.errors import InvalidInput

MAX_KEY = 255
#: How long a key keeps returning its job by default (I4; the setting decides).
RETENTION = 24 * 3600.0
#: The response header that marks an answer replayed for a key used before (I2, I5).
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    request_hash: str


def valid_key(header: str | None, field: Any) -> str | None:
    """The submission's key from its header or field (I1); ``None`` without one."""
    if field is not None and not isinstance(field, str):
        raise InvalidInput("idempotency_key must be a string")
    if header is not None and field is not None and header != field:
        raise InvalidInput("the Idempotency-Key header and the idempotency_key field differ")
    key = header if header is not None else field
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
        raise InvalidInput(f"an idempotency key is 1 to {MAX_KEY} printable ASCII characters")
    return key


def request_hash(request: dict[str, Any]) -> str:
    """The fingerprint of a submission (I2); ``request`` holds what the client sent."""
    canonical = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
