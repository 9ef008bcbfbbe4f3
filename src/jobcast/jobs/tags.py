"""Job tags: up to ``MAX_TAGS`` short labels given at submit (``"customer:42"``, ``"batch-7"``).

A tag is 1 to ``MAX_TAG_LENGTH`` characters of letters, digits and ``:._/@=+-``: safe in a URL
query, a log line and a filter box without escaping. Tags are fixed once the job is created;
``GET /api/jobs?tag=a&tag=b`` lists the jobs with every one of them (``sql.py`` Q8), and a live
job list follows them (``server/streams/job_list.py``).
"""

from __future__ import annotations

import re
from typing import Any

from jobcast.errors import InvalidInput

MAX_TAGS = 10
MAX_TAG_LENGTH = 64
_TAG = re.compile(rf"[A-Za-z0-9:._/@=+-]{{1,{MAX_TAG_LENGTH}}}")


def valid_tag(value: Any) -> str:
    if not isinstance(value, str) or _TAG.fullmatch(value) is None:
        raise InvalidInput(
            f"a tag is 1 to {MAX_TAG_LENGTH} letters, digits or ':._/@=+-', not {value!r:.80}"
        )
    return value


def validate_tags(value: Any) -> list[str]:
    """A submission's tags, in order, without repeats; ``[]`` for ``None``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput('tags must be a list of strings, such as ["customer:42"]')
    tags = list(dict.fromkeys(valid_tag(tag) for tag in value))
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"a job may have at most {MAX_TAGS} tags, not {len(tags)}")
    return tags
