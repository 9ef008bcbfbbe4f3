"""jobcast: real-time job progress and event streaming for Python backends.

The server-side names (``Jobcast``, ``create_app``, ``Hub``, ``Settings``, ...) are imported on
first use, so ``import jobcast.client`` and the CLI's client commands do not load the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobcast._version import __version__

if TYPE_CHECKING:
    from jobcast.auth import Principal, Role, TokenAuthority
    from jobcast.config import Settings
    from jobcast.errors import (
        Conflict,
        Forbidden,
        InvalidInput,
        JobcastError,
        MissingExtra,
        NotFound,
        PayloadTooLarge,
        RateLimited,
        Unauthorized,
        Unavailable,
    )
    from jobcast.events import Event, EventId
    from jobcast.hub import Hub
    from jobcast.server.app import Jobcast, create_app
    from jobcast.server.streams.job_frames import JobUpdate

_LOCATIONS = {
    "Conflict": "jobcast.errors",
    "Event": "jobcast.events",
    "EventId": "jobcast.events",
    "Forbidden": "jobcast.errors",
    "Hub": "jobcast.hub",
    "InvalidInput": "jobcast.errors",
    "Jobcast": "jobcast.server.app",
    "JobcastError": "jobcast.errors",
    "JobUpdate": "jobcast.server.streams.job_frames",
    "MissingExtra": "jobcast.errors",
    "NotFound": "jobcast.errors",
    "PayloadTooLarge": "jobcast.errors",
    "Principal": "jobcast.auth",
    "RateLimited": "jobcast.errors",
    "Role": "jobcast.auth",
    "Settings": "jobcast.config",
    "TokenAuthority": "jobcast.auth",
    "Unauthorized": "jobcast.errors",
    "Unavailable": "jobcast.errors",
    "create_app": "jobcast.server.app",
}

__all__ = [
    "Conflict",
    "Event",
    "EventId",
    "Forbidden",
    "Hub",
    "InvalidInput",
    "JobUpdate",
    "Jobcast",
    "JobcastError",
    "MissingExtra",
    "NotFound",
    "PayloadTooLarge",
    "Principal",
    "RateLimited",
    "Role",
    "Settings",
    "TokenAuthority",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "create_app",
]


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'jobcast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
