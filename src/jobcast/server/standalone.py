"""``jobcast serve``: the standalone server, assembled (the CLI only parses its options).

Decisions (cited as V1..V4):

V1. The whole application is wrapped in a second fast entrance (entrance.F3), so streams and
    plain publishes do not even pass FastAPI's and Starlette's entry frames.
V2. uvicorn runs jobcast's own httptools protocol (``native.py``) when the uvicorn installed has
    the internals it relies on (:func:`native.supported`, checked at start); otherwise the same
    streams run as plain ASGI on uvicorn's own protocol, with one warning line. Nothing else
    changes: the SSE suite runs both ways.
V3. After SIGTERM (and ``JOBCAST_SHUTDOWN_DELAY_SECONDS``), requests still running get what is
    left of the grace period; streams have ended at once with spread-out retry hints. A
    SIGTERM that led to a clean, graceful shutdown is a successful exit for a service manager.
V4. The collector is tuned once the app is built (``ops/gc_tuning.py``), and a process whose
    sync job handler ignores cancellation exits without waiting for its thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobcast.config import Settings

if TYPE_CHECKING:
    from jobcast.server.ops.metrics import Metrics
    from jobcast.server.serving.entrance import FastPaths

logger = logging.getLogger("jobcast")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How ``jobcast serve`` listens and logs (everything else is in :class:`Settings`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    json_logs: bool = False
    forwarded_allow_ips: str | None = None
    #: The path a reverse proxy serves jobcast under (it strips it before forwarding).
    root_path: str = ""
    #: A Unix domain socket to listen on instead of ``host`` and ``port``.
    uds: str | None = None
    #: Logged once logging is configured (in JSON mode, where the CLI prints nothing itself).
    banner: str = ""


def serve(settings: Settings, options: ServeOptions) -> None:
    """Run the standalone server until it is stopped (V1-V4)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from jobcast.server.app import create_app
    from jobcast.server.ops.gc_tuning import tune_for_serving
    from jobcast.server.ops.logs import log_config
    from jobcast.server.serving.entrance import FastPaths

    app = create_app(settings)
    entrance = FastPaths(app, app.state.jobcast.runtime)
    config = uvicorn.Config(
        entrance,  # V1
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        http=_http_protocol(settings, app.state.jobcast.metrics, entrance),  # V2
        proxy_headers=True,
        forwarded_allow_ips=options.forwarded_allow_ips,
        root_path=options.root_path,
        uds=options.uds,
        # uvicorn buffers a whole WebSocket message (16 MiB by default) before the app can
        # refuse it: cap it near our limit. The headroom lets a message a little over the limit
        # be refused by the app with its explanatory error; larger ones are cut off unread.
        ws_max_size=2 * settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_compression,
        # V3. uvicorn annotates an int but only hands it to asyncio.wait_for: fractions work.
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout(),  # type: ignore[arg-type]
        log_config=log_config(options.log_level) if options.json_logs else LOGGING_CONFIG,
    )
    if options.banner:
        logging.captureWarnings(True)
        logger.info(options.banner)
    # V3: uvicorn re-raises the signal that stopped it once shutdown is complete.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    tune_for_serving()  # V4: the app is built
    try:
        uvicorn.Server(config).run()
    finally:
        _exit_past_stuck_handlers()


def _http_protocol(settings: Settings, metrics: Metrics, entrance: FastPaths) -> Any:
    """jobcast's protocol, or uvicorn's own when its internals are not what it needs (V2)."""
    try:
        from jobcast.server.serving import native
    except ImportError as exc:  # uvicorn moved or renamed what it subclasses
        missing: str | None = f"its httptools protocol ({exc})"
    else:
        missing = native.unsupported()
        if missing is None:  # with this server's request head deadline (request_heads.R1)
            from jobcast.server.serving.instant_writes import InstantWrites

            protocol = native.StreamProtocol.answering(InstantWrites(entrance))  # N5
            return protocol.configured(
                settings.header_timeout_seconds, metrics.count_request_timeout
            )
    logger.warning(
        "this uvicorn lacks %s: open streams run as plain ASGI (more memory per stream)", missing
    )
    return "httptools"


def _exit_past_stuck_handlers() -> None:
    """Exit now if a sync job handler that ignores cancellation is still running (V4).

    Python cannot stop a thread, and the interpreter would wait for it at exit, past any grace
    period. Its job was already settled when the runner closed (re-queued or failed,
    lifecycle R3), so nothing is lost by leaving without it.
    """
    from jobcast.jobs.threads import handler_threads_alive

    stuck = handler_threads_alive()
    if not stuck:
        return
    error = sys.exc_info()[1]  # how serve was ending: sys.exit() from the SIGTERM handler
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else int(error.code is not None)
    else:
        code = int(error is not None)
    logger.warning(
        "exiting with %d job handler thread(s) still running; their jobs were re-queued or "
        "failed as interrupted",
        stuck,
    )
    logging.shutdown()
    os._exit(code)
