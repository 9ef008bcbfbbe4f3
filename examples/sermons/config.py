"""The service's configuration: the front end's environment variables, plus ``JOBCAST_*``.

``FRONTEND_URL``, ``CSRF_EXEMPT_PATHS`` and ``SSE_HEARTBEAT_INTERVAL`` keep the names the
existing deployment uses; they become jobcast settings. Everything else jobcast offers is still
set with its ``JOBCAST_*`` variable (``JOBCAST_DATA_DIR``, ``JOBCAST_JWT_SECRET``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobcast import Settings

DEFAULT_DATA_DIR = Path(".jobcast") / "sermons"


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class SermonsConfig:
    #: The React dev server (CORS, with credentials).
    frontend_url: str = "http://localhost:5173"
    #: Path prefixes where cookie-session requests need no X-CSRF-Token.
    csrf_exempt_paths: tuple[str, ...] = ("/api/v2/events/stream", "/health", "/docs")
    #: Seconds of silence on a stream before a named ``heartbeat`` event.
    heartbeat_interval: float = 30.0
    #: The Celery queue the videos' tasks go to (its workers: ``tasks.py``).
    celery_queue: str = "sermons"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SermonsConfig:
        defaults = cls()
        return cls(
            frontend_url=env.get("FRONTEND_URL", defaults.frontend_url),
            csrf_exempt_paths=_split(env["CSRF_EXEMPT_PATHS"])
            if "CSRF_EXEMPT_PATHS" in env
            else defaults.csrf_exempt_paths,
            heartbeat_interval=float(
                env.get("SSE_HEARTBEAT_INTERVAL", defaults.heartbeat_interval)
            ),
            celery_queue=env.get("SERMONS_CELERY_QUEUE", defaults.celery_queue),
        )

    def settings(self, **overrides: Any) -> Settings:
        """jobcast's settings for this service; ``overrides`` win (tests pass a data dir)."""
        values: dict[str, Any] = {
            "cors_origins": [self.frontend_url],
            "csrf_exempt_paths": list(self.csrf_exempt_paths),
            "heartbeat_interval": self.heartbeat_interval,
            # The seed's stream is open to anyone, as `curl -N .../stream` shows: video events
            # are public topics; the videos API itself needs a session or a bearer token.
            "public_topics": ["videos/*"],
            # Deleting a running video revokes its Celery task (and terminates it).
            "celery_app": "examples.sermons.tasks:sender",
        }
        if "JOBCAST_DATA_DIR" not in os.environ:
            values["data_dir"] = DEFAULT_DATA_DIR
        values.update(overrides)
        return Settings(**values)
