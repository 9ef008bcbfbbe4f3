"""The hot routes, declared once: the framework's router and OpenAPI schema read their paths,
and the fast entrance (``serving/entrance.py``) matches requests against the same
declarations, so a path is never written twice.

A matcher is a prefix and a suffix around at most one parameter (no regular expression): it
runs for every request the entrance sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HotRoute:
    """One route the fast entrance may answer itself."""

    method: str  # "GET", "POST" or "WEBSOCKET"
    path: str  # the framework's template: "/api/jobs/{job_id}/events"
    _prefix: str = field(init=False, repr=False)
    _suffix: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        prefix, brace, rest = self.path.partition("{")
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_suffix", rest.partition("}")[2] if brace else None)

    def match(self, path: str) -> str | None:
        """The parameter's value if ``path`` is this route's (``""`` when it has none), else
        ``None``. A parameter is one non-empty path segment."""
        suffix = self._suffix
        if suffix is None:
            return "" if path == self.path else None
        prefix = self._prefix
        if not path.startswith(prefix) or not path.endswith(suffix):
            return None
        value = path[len(prefix) : len(path) - len(suffix)]
        return value if value and "/" not in value else None


PUBLISH = HotRoute("POST", "/api/events")
EVENTS_STREAM = HotRoute("GET", "/api/events")
JOB_STREAM = HotRoute("GET", "/api/jobs/{job_id}/events")
EVENTS_SOCKET = HotRoute("WEBSOCKET", "/ws/events")
JOB_SOCKET = HotRoute("WEBSOCKET", "/ws/jobs/{job_id}")
