"""Optional dependencies: which command or setting needs which extra, checked before anything
starts. The base install is the client side; ``server`` and ``queue`` are extras too.

A Redis broker, a PostgreSQL store or a worker queue imports its library only when chosen
(backends by URL). Without the library, the import used to fail wherever it first happened,
as a traceback ending in ``ModuleNotFoundError``, or as "Application startup failed". Here
each is tried once, at start, and a missing one is a :class:`~jobcast.errors.MissingExtra`
naming the extra to install.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from jobcast.errors import MissingExtra


def require(module: str, extra: str | None, needed_by: str) -> None:
    """Import ``module`` or raise :class:`MissingExtra` saying how to install it."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        install = f"pip install 'jobcast[{extra}]'" if extra else f"pip install {module}"
        raise MissingExtra(
            f"{needed_by} needs the {module!r} package, which is not installed: {install}",
            extra=extra,
        ) from exc


def check_backends(
    broker_url: str, store_url: str, queue_url: str | None, *, tracing: bool = False
) -> None:
    """Raise :class:`MissingExtra` for the first configured backend (or tracing) that cannot
    be loaded."""
    broker_scheme = urlsplit(broker_url).scheme
    if broker_scheme.startswith(("redis", "rediss")):  # a Sentinel URL too
        require("redis", "redis", "the Redis broker (JOBCAST_BROKER_URL)")
    elif broker_scheme.startswith(("postgresql", "postgres")):  # asyncpg, whatever the store's
        require("asyncpg", "postgres", "the PostgreSQL broker (JOBCAST_BROKER_URL or the store's)")
    store_scheme = urlsplit(store_url).scheme
    if store_scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        require("asyncpg", "postgres", "the PostgreSQL job store (JOBCAST_STORE_URL)")
    elif store_scheme == "postgresql+psycopg":
        require("psycopg", None, "the PostgreSQL job store (JOBCAST_STORE_URL)")
    if queue_url:
        require("saq", "queue", "the worker queue (JOBCAST_QUEUE_URL)")
        require("redis", "queue", "the worker queue (JOBCAST_QUEUE_URL)")
        if urlsplit(queue_url).scheme.startswith(("postgresql", "postgres")):
            require("psycopg", "postgres", "the PostgreSQL worker queue (JOBCAST_QUEUE_URL)")
            require("psycopg_pool", "postgres", "the PostgreSQL worker queue (JOBCAST_QUEUE_URL)")
    if tracing:
        require("opentelemetry.trace", "otel", "tracing (JOBCAST_OTEL)")


#: What ``jobcast serve`` (and ``jobcast token``) need beyond the client: the "server" extra.
SERVER_MODULES = ("fastapi", "uvicorn", "jwt", "sqlalchemy", "multipart", "limits")
#: What ``jobcast worker`` needs beyond the client: the "queue" extra.
WORKER_MODULES = ("saq", "redis", "sqlalchemy", "prometheus_client")


def check_server(command: str) -> None:
    """Raise :class:`MissingExtra` when the server's stack is not installed (a client-only
    install: ``pip install jobcast`` without the "server" extra)."""
    for module in SERVER_MODULES:
        require(module, "server", f"jobcast {command}")


def check_worker() -> None:
    for module in WORKER_MODULES:
        require(module, "queue", "jobcast worker")
