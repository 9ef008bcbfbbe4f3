"""The exception tree, and the one place that knows each error's HTTP status.

    JobcastError                  500  base of everything jobcast raises on purpose
    ├── InvalidInput              422  a bad topic, pattern, event type or parameter
    ├── PayloadTooLarge           413  a body, event or upload over its configured limit
    ├── Unauthorized              401  no credential, or one that does not verify
    ├── Forbidden                 403  a valid credential that does not allow this
    ├── NotFound                  404
    ├── Conflict                  409  the resource is in the wrong state for this
    ├── RateLimited               429  carries ``retry_after`` seconds
    ├── Unavailable               503  a backend (store, broker) cannot be reached
    └── MissingExtra                   an optional dependency a setting needs is not installed
                                       (raised at start, before anything is served)

Foreign errors (sqlite3, redis, ...) are translated into these at the backend seam, so the
server maps exactly this tree to responses and nothing else leaks to a client.
"""

from __future__ import annotations


class JobcastError(Exception):
    """Base class. ``code`` is a stable machine-readable name sent in error bodies."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(JobcastError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(JobcastError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(JobcastError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, reason: str = "invalid_token") -> None:
        super().__init__(message)
        self.reason = reason


class Forbidden(JobcastError):
    status_code = 403
    code = "forbidden"


class NotFound(JobcastError):
    status_code = 404
    code = "not_found"


class Conflict(JobcastError):
    status_code = 409
    code = "conflict"


class RateLimited(JobcastError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(JobcastError):
    status_code = 503
    code = "unavailable"


class MissingExtra(JobcastError):
    """A configured backend needs an optional dependency (an extra) that is not installed."""

    code = "missing_extra"

    def __init__(self, message: str, *, extra: str | None) -> None:
        super().__init__(message)
        self.extra = extra
