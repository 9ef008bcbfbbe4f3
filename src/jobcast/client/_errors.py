"""The client's exception tree, and the seam where httpx errors are translated (the
WebSocket library's are translated in ``_sockets``, which is loaded only when used).

    ClientError                   base of everything the client raises
    ├── ConnectionFailed          the server could not be reached (refused, DNS, timeout)
    ├── WaitTimeout               ``wait()`` ran out of time (also a ``TimeoutError``)
    ├── ProtocolError             the server answered something the client cannot read
    └── HTTPStatusError           the server answered with an error status
        ├── BadRequest            400, 413, 415, 422: the request itself is wrong
        ├── AuthError             401: no token, or one that is invalid or expired
        ├── ForbiddenError        403: a valid token that does not allow this
        ├── NotFoundError         404: no such job (or not yours)
        ├── ConflictError         409: the job is in the wrong state for this
        ├── RateLimitedError      429: carries ``retry_after`` seconds
        └── ServerUnavailable     500, 502, 503, 504: worth retrying later

Every ``HTTPStatusError`` keeps the status, the server's machine-readable ``error`` code, its
``message`` and, for 401, its ``reason`` (``token_expired``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx


class ClientError(Exception):
    """Base class of every error the jobcast client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait()`` did not see the job finish in time."""


class ProtocolError(ClientError):
    """The server's answer was not what the API promises (not JSON, say)."""


class HTTPStatusError(ClientError):
    """The server answered with an error status; ``error`` and ``message`` are its own words."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        reason: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.reason = reason
        self.body = body

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.message}"


class BadRequest(HTTPStatusError):
    """400, 413, 415 or 422: the request is invalid; sending it again will not help."""


class AuthError(HTTPStatusError):
    """401: no token, or an invalid or expired one (``reason`` says which)."""


class ForbiddenError(HTTPStatusError):
    """403: the token is valid but does not allow this."""


class NotFoundError(HTTPStatusError):
    """404: no such resource, or one the caller may not see."""


class ConflictError(HTTPStatusError):
    """409: the resource is in the wrong state (cancelling a finished job, say)."""


class RateLimitedError(HTTPStatusError):
    """429: too many requests; ``retry_after`` is how long the server asks to wait."""

    def __init__(self, *args: Any, retry_after: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerUnavailable(HTTPStatusError):
    """5xx: the server is failing or draining; retrying later may succeed."""


_BY_STATUS: dict[int, type[HTTPStatusError]] = {
    400: BadRequest,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    429: RateLimitedError,
}


def status_error(response: httpx.Response, body: bytes) -> HTTPStatusError:
    """The typed error for an error response (its body already read)."""
    status = response.status_code
    try:
        payload = httpx.Response(status, content=body).json()
    except ValueError:
        payload = None
    fields = payload if isinstance(payload, dict) else {}
    error = str(fields.get("error") or response.reason_phrase or "http_error")
    message = str(fields.get("message") or body[:200].decode(errors="replace") or error)
    return typed_error(status, error, message, payload, _retry_after(response))


def typed_error(
    status: int, error: str, message: str, payload: Any = None, retry_after: float = 1.0
) -> HTTPStatusError:
    """The :class:`HTTPStatusError` subclass for ``status``, carrying the server's fields.

    Shared by HTTP answers and WebSocket closes (``4000 + status``, ``_sockets``).
    """
    fields = payload if isinstance(payload, dict) else {}
    reason = fields.get("reason")
    kwargs: dict[str, Any] = {"reason": str(reason) if reason else None, "body": payload}
    cls = _BY_STATUS.get(status)
    if cls is RateLimitedError:
        kwargs["retry_after"] = retry_after
    if cls is None:
        cls = ServerUnavailable if status >= 500 else HTTPStatusError
    return cls(status, error, message, **kwargs)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


@contextlib.contextmanager
def translate_transport(url: str) -> Iterator[None]:
    """The seam: every httpx transport error becomes a :class:`ConnectionFailed`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ConnectionFailed(f"timed out talking to {url} ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot reach {url}: {exc or type(exc).__name__}") from exc
