"""Topic names and subscription patterns.

A topic is a ``/``-separated name (``jobs/8f3c``, ``videos/42``, ``workitems``). A pattern is a
topic, a topic prefix ending in ``/*`` (``jobs/*`` matches every topic under ``jobs/``), or ``*``
alone (every topic). Segments are non-empty and made of letters, digits and ``-_.:@``; ``.`` and
``..`` are not segments, so no topic can look like a path traversal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jobcast.errors import InvalidInput

MAX_TOPIC_LENGTH = 200
#: Topics of the service's own control events between instances (jobs/access.py). No valid
#: topic starts with ``$``, so no client can publish or subscribe to them, and the hub never
#: fans them out nor replays them (only ``*`` could match them).
CONTROL_PREFIX = "$jobcast/"

_SEGMENT = r"(?!\.\.?(?:/|$))[A-Za-z0-9_\-.:@]+"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid topic name, else raise :class:`InvalidInput`."""
    if not isinstance(topic, str) or not topic:
        raise InvalidInput("topic must be a non-empty string")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidInput(f"topic is longer than {MAX_TOPIC_LENGTH} characters")
    if _TOPIC_RE.fullmatch(topic) is None:
        raise InvalidInput(
            f"invalid topic {topic[:60]!r}: use '/'-separated segments of letters, digits "
            "and '-_.:@' (no empty, '.' or '..' segments)"
        )
    return topic


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """A parsed subscription pattern: an exact topic, or every topic under ``prefix``."""

    text: str
    #: For a wildcard, the prefix every matching topic starts with (``"jobs/"``, or ``""`` for
    #: ``*``); ``None`` for an exact topic.
    prefix: str | None

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        if text == "*":
            return cls(text, "")
        if text.endswith("/*"):
            validate_topic(text[:-2])
            return cls(text, text[:-1])
        if "*" in text:
            raise InvalidInput(
                f"invalid pattern {text[:60]!r}: '*' is only allowed as a last segment"
            )
        return cls(validate_topic(text), None)

    @property
    def is_wildcard(self) -> bool:
        return self.prefix is not None

    def matches(self, topic: str) -> bool:
        if self.prefix is None:
            return topic == self.text
        return topic.startswith(self.prefix)


def parse_patterns(texts: list[str], *, limit: int) -> tuple[TopicPattern, ...]:
    """Parse and de-duplicate subscription patterns, at most ``limit`` of them."""
    if not texts:
        raise InvalidInput("at least one topic is required")
    if len(texts) > limit:
        raise InvalidInput(f"at most {limit} topics per subscription")
    unique = dict.fromkeys(texts)
    return tuple(TopicPattern.parse(text) for text in unique)


def wildcard_prefixes(topic: str) -> list[str]:
    """Every wildcard prefix that matches ``topic``: ``a/b/c`` -> ``["", "a/", "a/b/"]``."""
    prefixes = [""]
    index = topic.find("/")
    while index != -1:
        prefixes.append(topic[: index + 1])
        index = topic.find("/", index + 1)
    return prefixes
