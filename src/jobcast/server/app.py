"""The jobcast runtime (:class:`Jobcast`) and the standalone app (:func:`create_app`).

Nothing lives at module level: a :class:`Jobcast` holds its settings, and its hub and token
authority are created in its lifespan, so one process may run several independent instances
(tests do). Routes are closures over their instance, not globals.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobcast import __version__
from jobcast.auth import Principal, TokenAuthority
from jobcast.brokers import Replay, open_broker
from jobcast.config import Settings
from jobcast.events import Event
from jobcast.hub import Hub
from jobcast.jobs import builtin
from jobcast.jobs.registry import Registry
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.policy import Policy
from jobcast.server.auth_api import auth_router
from jobcast.server.browser import install_cors
from jobcast.server.credentials import resolve_principal, stream_owner
from jobcast.server.dashboard import dashboard_router
from jobcast.server.errors import install_error_handlers
from jobcast.server.events_api import events_router
from jobcast.server.fast_paths import FastPaths
from jobcast.server.job_streams import SseRender, WsRender, job_event_stream
from jobcast.server.jobs_api import jobs_router
from jobcast.server.limits import BodyLimitMiddleware
from jobcast.server.logs import install_log_redaction, use_json_logs
from jobcast.server.metrics import Metrics, metrics_router
from jobcast.server.ratelimit import RateLimiter
from jobcast.server.request_id import RequestIdMiddleware
from jobcast.server.service_api import service_router
from jobcast.server.shared_state import rate_limit_storage, shared_redis_pool, spent_tickets
from jobcast.server.signals import drain_on_exit_signals
from jobcast.server.sse import EventStreamResponse
from jobcast.server.uploads import Received, receive_multipart
from jobcast.server.ws_api import serve_job_socket, ws_router
from jobcast.stores import JobStore, open_store
from jobcast.subscription import CloseReason, Subscription
from jobcast.topics import TopicPattern
from jobcast.wire import ServerSentEvent, retry_frame

_bearer = HTTPBearer(auto_error=False, description="A JWT minted by `jobcast token`.")


class Jobcast:
    """One jobcast service: mount it into a FastAPI app, or use :func:`create_app`.

    ::

        jc = Jobcast(Settings())
        app = FastAPI(lifespan=jc.lifespan)
        jc.install(app)
        ...
        await jc.hub.publish("videos/42", "video.status", {"status": "PROCESSING"})
    """

    def __init__(self, settings: Settings | None = None, *, policy: Policy | None = None) -> None:
        self.settings = settings or Settings()
        self.settings.check_extras()  # a missing optional dependency: one clear error, first
        #: Every allow/deny decision. Pass a :class:`Policy` subclass for your own rules (say,
        #: who besides a job's owner may watch it); it must honour the settings' public topics.
        self.policy = policy or Policy(self.settings.public_topics)
        #: Rate-limit counters and spent tickets: in memory, or in the broker's Redis through
        #: one pool that the lifespan disconnects at its end (shared_state.py).
        self._shared_pool = shared_redis_pool(self.settings)
        self.limiter = RateLimiter(
            self.settings, rate_limit_storage(self.settings, self._shared_pool)
        )
        self.spent_tickets = spent_tickets(self.settings, self._shared_pool)
        self.metrics = Metrics(self)
        self._hub: Hub | None = None
        self._tokens: TokenAuthority | None = None
        self._store: JobStore | None = None
        self._runner: EmbeddedRunner | None = None
        #: Job handlers by kind: the built-ins, the ``handlers`` modules, and any added here.
        self.registry = Registry()
        self.registry.update(builtin.registry)
        for module in self.settings.handlers:
            self.registry.load_module(module)

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("jobcast is not running: use it inside its lifespan")
        return self._hub

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("jobcast is not running: use it inside its lifespan")
        return self._store

    @property
    def runner(self) -> EmbeddedRunner:
        if self._runner is None:
            raise RuntimeError("jobcast is not running: use it inside its lifespan")
        return self._runner

    @property
    def tokens(self) -> TokenAuthority:
        if self._tokens is None:
            self._tokens = TokenAuthority.from_settings(self.settings)
        return self._tokens

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        settings = self.settings
        _ = self.tokens  # create the secret now, not on the first request
        install_log_redaction()
        if settings.log_format == "json":
            use_json_logs()
        hub = Hub(
            open_broker(settings.resolved_broker_url, settings.retention()), settings.hub_options()
        )
        await hub.start()
        self._hub = hub
        # Each stream's response holds these: one bound method each for all of them.
        self._stream_hooks = (hub.unsubscribe, self.metrics.observe_write, self._closing_frame)
        try:
            await self.metrics.start()
            store = self._store = open_store(settings.resolved_store_url)
            await store.open()
            try:
                runner = self._runner = _make_runner(store, hub, self.registry, settings)
                await runner.start()
                self.policy.job_access = runner.access_of
                try:
                    with drain_on_exit_signals(hub, settings.shutdown_delay_seconds):
                        yield
                finally:
                    await runner.close()
                    self._runner = None
            finally:
                await store.close()
                self._store = None
        finally:
            await self.metrics.close()
            await hub.close()
            self._hub = None
            if self._shared_pool is not None:
                await self._shared_pool.disconnect()

    def install(self, app: FastAPI, *, upload_paths: Sequence[str] = ()) -> None:
        """Add jobcast's routes, error handlers and body limits to ``app``.

        ``upload_paths``: path prefixes of your own upload routes, which take their bodies with
        :meth:`receive_upload` (limited by ``max_upload_bytes``) instead of the JSON body limit.
        """
        app.state.jobcast = self
        app.include_router(self.router())
        install_error_handlers(app)
        app.add_middleware(
            BodyLimitMiddleware,
            max_bytes=self.settings.max_body_bytes,
            # Job submission and upload routes enforce their own (upload) limits.
            exempt_prefixes=("/api/jobs", *upload_paths),
        )
        install_cors(app, self.settings)
        app.add_middleware(RequestIdMiddleware)  # its id is in every log line
        app.add_middleware(FastPaths, jc=self)  # outermost of ours: fast_paths.F1-F3

    def router(self) -> Any:
        from fastapi import APIRouter

        router = APIRouter()
        router.include_router(auth_router(self))
        router.include_router(metrics_router(self))
        router.include_router(events_router(self))
        router.include_router(jobs_router(self))
        router.include_router(ws_router(self))
        router.include_router(dashboard_router())
        router.include_router(service_router(self))

        return router

    # -- request helpers -------------------------------------------------------------------

    async def principal(
        self,
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],  # for the docs
    ) -> Principal | None:
        """The caller (see ``credentials.py``); ``None`` when the request carries none."""
        return await resolve_principal(self, request)

    async def open_stream(
        self,
        patterns: tuple[TopicPattern, ...],
        last_event_id: str | None,
        allow: Callable[[str], bool] | None,
        *,
        principal: Principal | None = None,
        prelude: bytes = b"",
        final: Callable[[Event], bool] | None = None,
        event_frame: Callable[[Event], bytes] | None = None,
        heartbeat: Callable[[], bytes] | None = None,
    ) -> EventStreamResponse:
        """An SSE stream of ``patterns``, for routes at your own URLs (see ``/api/events``).

        ``allow`` is the per-topic filter from ``policy.subscription_filter``. ``prelude`` is
        written first (a ``connected`` event, say); the stream ends after the first event for
        which ``final`` is true. ``event_frame`` writes an event in your own wire format
        (``b""`` skips it) and ``heartbeat`` returns the heartbeat to write, such as a named
        event; by default events are jobcast's shared frames and heartbeats ``: ping``.
        """
        subscription, replay = await self.hub.subscribe(
            patterns, last_event_id=last_event_id, allow=allow, **stream_owner(principal)
        )
        return self.stream_response(
            subscription,
            replay,
            last_event_id,
            prelude,
            final,
            event_frame=event_frame,
            heartbeat=heartbeat,
        )

    def stream_response(
        self,
        subscription: Subscription,
        replay: Replay | None,
        last_event_id: str | None,
        prelude: bytes = b"",
        final: Callable[[Event], bool] | None = None,
        *,
        event_frame: Callable[[Event], bytes] | None = None,
        heartbeat: Callable[[], bytes] | None = None,
    ) -> EventStreamResponse:
        """The SSE response for a subscription the caller already holds."""
        on_close, on_write, closing_frame = self._stream_hooks
        return EventStreamResponse(
            subscription,
            replay=replay,
            last_event_id=last_event_id,
            retry_ms=self.settings.retry_ms,
            on_close=on_close,
            on_write=on_write,
            closing_frame=closing_frame,
            prelude=prelude,
            final=final,
            event_frame=event_frame,
            heartbeat=heartbeat,
        )

    async def job_stream(
        self,
        job_id: str,
        principal: Principal | None,
        last_event_id: str | None = None,
        *,
        kind: str | None = None,
        render: SseRender | None = None,
        heartbeat: Callable[[], bytes] | None = None,
    ) -> Response:
        """A job's SSE stream (what ``/api/jobs/{id}/events`` answers), for your own URLs.

        The caller must be allowed to read the job (``policy.check_job``); with ``kind``, a job
        of another kind is a 404. ``render`` turns each :class:`JobUpdate` (the whole job after
        each event) into ``(event name, data)`` for your front end's format, or ``None`` to
        skip it; ids, resume, the snapshot and the end after the terminal event stay jobcast's.
        """
        return await job_event_stream(
            self,
            job_id,
            principal,
            last_event_id,
            kind=kind,
            render=render,
            heartbeat=heartbeat,
        )

    async def job_socket(
        self,
        websocket: WebSocket,
        job_id: str,
        *,
        kind: str | None = None,
        render: WsRender | None = None,
    ) -> None:
        """Serve a job's WebSocket (what ``/ws/jobs/{id}`` does) on your own route: accept,
        authenticate (``?token=``, ``?ticket=``, header or first message), send the job's
        messages (``render``: the JSON value for each :class:`JobUpdate`, or ``None``), close
        1000 after the terminal one. Errors close with ``4000 + status``."""
        await serve_job_socket(self, websocket, job_id, kind=kind, render=render)

    async def receive_upload(self, request: Request) -> Received:
        """Stream a multipart body to disk: its ``file`` part hashed (SHA-256) as it arrives,
        within ``max_upload_bytes`` (413 and nothing kept past it), and its text fields.

        Hand ``received.input`` and ``received.upload`` to ``runner.submit``, and call
        ``received.discard()`` afterwards (a no-op once the runner took the file). List the
        route in ``install(app, upload_paths=...)`` so the JSON body limit leaves it alone.
        """
        settings = self.settings
        return await receive_multipart(
            request,
            self.runner.options.uploads_dir,
            max_file=settings.max_upload_bytes,
            max_fields=settings.max_body_bytes,
            content_types=settings.upload_content_types,
        )

    def _closing_frame(self, reason: CloseReason) -> bytes:
        if reason is CloseReason.DRAIN:
            return retry_frame(self.hub.drain_retry_ms())
        if reason is CloseReason.EXPIRED:
            return ServerSentEvent(
                event="reauth", data='{"reason":"credential_expired"}', retry=self.settings.retry_ms
            ).encode()
        return ServerSentEvent(
            comment=f"closed: {reason.value}; resume with Last-Event-ID",
            retry=self.settings.retry_ms,
        ).encode()


def _make_runner(
    store: JobStore, hub: Hub, registry: Registry, settings: Settings
) -> EmbeddedRunner:
    """The embedded runner, or with ``queue_url`` the runner that hands jobs to workers."""
    if not settings.queue_url:
        return EmbeddedRunner(store, hub, registry, settings.runner_options())
    from jobcast.jobs.worker_queue import QueueRunner  # needs the 'queue' extra

    return QueueRunner(
        store,
        hub,
        registry,
        settings.runner_options(),
        queue_url=settings.queue_url,
        heartbeat=settings.worker_heartbeat_seconds,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The standalone jobcast server."""
    jc = Jobcast(settings)
    app = FastAPI(
        title="jobcast",
        version=__version__,
        summary="Real-time job progress and event streaming",
        lifespan=jc.lifespan,
    )
    jc.install(app)
    return app
