"""Turning an e-mail into a work item: its reference and the fields its body states.

Brokers write ``Key: Value`` lines (``Insured: Acme Ltd``, ``Policy number: PL-778812``); each
becomes a field (``insured``, ``policy_number``). A reference such as ``SUB-2025-000123`` in the
subject or body becomes the work item's ``submission_ref``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

REFERENCE = re.compile(r"\b(?:SUB|REF|CLM)-\d{4}-\d{3,8}\b", re.IGNORECASE)
FIELD_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _/()-]{0,60}?)\s*:\s*(\S.{0,500}?)\s*$")
MAX_FIELDS = 50


def field_name(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def extract_fields(body: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in body.splitlines():
        match = FIELD_LINE.match(line)
        if match and len(fields) < MAX_FIELDS:
            fields.setdefault(field_name(match.group(1)), match.group(2))
    return fields


def work_item(
    subject: str, from_email: str, body: str, submission_id: str | None = None
) -> dict[str, Any]:
    """A new work item (status ``new``) from an e-mail."""
    submission = submission_id or uuid.uuid4().hex
    found = REFERENCE.search(subject) or REFERENCE.search(body)
    now = datetime.now(UTC)
    reference = found.group(0).upper() if found else f"SUB-{now:%Y}-{submission[:6].upper()}"
    return {
        "id": f"wi_{uuid.uuid4().hex}",
        "submission_id": submission,
        "submission_ref": reference,
        "subject": subject,
        "from_email": from_email,
        "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": "new",
        "extracted_fields": extract_fields(body),
    }
