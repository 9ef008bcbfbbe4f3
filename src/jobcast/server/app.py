"""jobcast's public face (:class:`Jobcast`) and the standalone app (:func:`create_app`).

A :class:`Jobcast` holds one :class:`~jobcast.server.runtime.Runtime` and offers what an
application needs: the lifespan, ``install`` (the routes and their plumbing), and the stream
helpers for its own URLs. Routes are closures over the runtime, not globals, so one process
may run several independent instances (tests do).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline

from jobcast._version import __version__
from jobcast.auth import Principal, TokenAuthority
from jobcast.brokers import Replay
from jobcast.config import Settings
from jobcast.errors import InvalidInput, PayloadTooLarge
from jobcast.events import Event, EventDraft
from jobcast.hub import Hub
from jobcast.jobs.registry import Registry
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.policy import Policy
from jobcast.server import mount
from jobcast.server.http.ratelimit import RateLimiter
from jobcast.server.http.uploads import Received
from jobcast.server.ops.metrics import Metrics
from jobcast.server.routes.jobs import receive_upload
from jobcast.server.runtime import Runtime
from jobcast.server.streams.job_frames import SseRender, WsRender
from jobcast.server.streams.job_socket import serve_job_socket
from jobcast.server.streams.job_sse import job_event_stream
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.server.streams.topic_stream import open_stream, stream_response
from jobcast.stores import JobStore
from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern


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
        #: What every route and stream works with (``runtime.py``); this class is its face.
        self.runtime = Runtime(settings or Settings(), policy=policy)
        self._mounted: list[mount.Mounted] = []

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def policy(self) -> Policy:
        """Every allow/deny decision. Pass a :class:`Policy` subclass for your own rules (say,
        who besides a job's owner may watch it); it must honour the settings' public topics."""
        return self.runtime.policy

    @property
    def registry(self) -> Registry:
        """Job handlers by kind: the built-ins, the ``handlers`` modules, and any added here."""
        return self.runtime.registry

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @property
    def limiter(self) -> RateLimiter:
        """Rate limits (``publish``, ``submit``, ``ticket``), for your own routes too."""
        return self.runtime.limiter

    @property
    def hub(self) -> Hub:
        return self.runtime.hub

    @property
    def store(self) -> JobStore:
        return self.runtime.store

    @property
    def runner(self) -> EmbeddedRunner:
        return self.runtime.runner

    @property
    def tokens(self) -> TokenAuthority:
        return self.runtime.tokens

    async def publish_in(self, connection: Any, topic: str, type: str, data: Any = None) -> None:
        """Publish one event in the application's own PostgreSQL transaction.

        ``connection`` is an asyncpg connection or a SQLAlchemy ``AsyncConnection`` or
        ``AsyncSession`` on the broker's database. The event exists if and only if that
        transaction commits; subscribers receive it after the commit (its id is given then).
        Needs the PostgreSQL broker; else raises :class:`~jobcast.errors.InvalidInput`.
        """
        draft = EventDraft.create(topic, type, data)
        if len(draft.data_json) > self.settings.max_event_bytes:
            raise PayloadTooLarge(f"event data is over {self.settings.max_event_bytes} bytes")
        publish_in = getattr(self.hub.broker, "publish_in", None)  # brokers/postgres.G6
        if publish_in is None:
            raise InvalidInput("publish_in needs the PostgreSQL broker (postgresql://...)")
        await publish_in(connection, [draft])

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the hub, the store and the runner; stop them in reverse (runtime.py). Refuses
        to start when the application added a route that one of jobcast's would shadow
        (mount.M2)."""
        for mounted in self._mounted:
            mounted.check()
        async with self.runtime.lifespan(app):
            yield

    def install(
        self,
        app: FastAPI,
        *,
        prefix: str = "",
        app_wide: bool = False,
        upload_paths: Sequence[str] = (),
        dashboard: bool = True,
        service_routes: bool = True,
        fast_entrance: bool = True,
    ) -> None:
        """Add jobcast's routes to ``app``, under ``prefix`` if given, with their plumbing (the
        fast entrance, JSON errors, body limits, CORS, request ids) on jobcast's paths only.

        Nothing else of ``app`` changes (``server/mount.py``): its exception handlers, limits,
        ``/`` and ``/health`` stay its own, and a route of ``app`` that one of jobcast's would
        shadow is refused (``RouteConflict``); leave out jobcast's ``dashboard`` or
        ``service_routes`` (``/health``, ``/ready``, ``/metrics``), or use a ``prefix``.
        With ``app_wide``, an app built around jobcast gets the plumbing on every path, its own
        routes included; ``upload_paths`` are then its upload routes, which take their bodies
        with :meth:`receive_upload` (limited by ``max_upload_bytes``) instead. Without the
        ``fast_entrance``, streams and publishes go through the framework like any request.
        """
        app.state.jobcast = self
        self._mounted.append(
            mount.install(
                app,
                self.runtime,
                prefix=prefix,
                app_wide=app_wide,
                upload_paths=upload_paths,
                dashboard=dashboard,
                service_routes=service_routes,
                fast_entrance=fast_entrance,
            )
        )

    def router(self) -> APIRouter:
        """Every jobcast route, without their plumbing (``install`` adds both)."""
        return mount.routes(self.runtime)

    # -- request helpers -------------------------------------------------------------------

    @property
    def principal(self) -> Callable[..., Awaitable[Principal | None]]:
        """The dependency that resolves the caller (``None`` when the request carries no
        credential). Every jobcast route depends on it: ``app.dependency_overrides`` keyed by
        it applies to all of them."""
        return self.runtime.principal

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
        return await open_stream(
            self.runtime,
            patterns,
            last_event_id,
            allow,
            principal=principal,
            prelude=prelude,
            final=final,
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
        return stream_response(
            self.runtime,
            subscription,
            replay,
            last_event_id,
            prelude,
            final,
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
            self.runtime,
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
        await serve_job_socket(self.runtime, websocket, job_id, kind=kind, render=render)

    async def receive_upload(self, request: Request) -> Received:
        """Stream a multipart body to disk: its ``file`` part hashed (SHA-256) as it arrives,
        within ``max_upload_bytes`` (413 and nothing kept past it), and its text fields.

        Hand ``received.input`` and ``received.upload`` to ``runner.submit``, and call
        ``received.discard()`` afterwards (a no-op once the runner took the file). List the
        route in ``install(app, upload_paths=...)`` so the JSON body limit leaves it alone.
        """
        return await receive_upload(self.runtime, request)


API_DESCRIPTION = """\
Real-time job progress and event streaming: submit jobs and watch them, publish events and
follow topics as Server-Sent Events, WebSockets or polls.

**Credentials**: `Authorization: Bearer <JWT>`, a one-use `?ticket=` for streams, `?token=` for
clients that cannot set headers, or the session cookie (with `X-CSRF-Token` for writes).

**Errors** are JSON: `{"error": "<code>", "message": "...", "reason"?, "detail"?}`.

**Streams** resume with `Last-Event-ID` (or `?last_event_id=`); a resume that history cannot
cover starts with an in-band `event: reset`. Heartbeats are `: ping` comments.

**WebSockets** (not listed below, as OpenAPI cannot describe them):

- `GET /ws/jobs/{job_id}` (upgrade): one job's events as JSON text messages
  (`{"id", "topic", "type", "data", "ts"}`, starting with a `snapshot`), then close 1000 after
  the terminal event. Query: `token`, `ticket`, `last_event_id`; or a first message
  `{"op": "auth", "token": ...}`.
- `GET /ws/events` (upgrade): ops `subscribe` (`topics`, `last_event_id`), `unsubscribe`,
  `ack` (`id`, with `?client_id=`), `ping`; replies `subscribed`, `unsubscribed`, `reset`,
  `pong`, `ping`, `error`.
- Close codes: 1000 done, 1008 flooding or an overflowing outbox, 1009 a message too big,
  1011 a server error, 1012 restarting or a time limit (reconnect and resume), 1013 too slow or
  unavailable (reconnect later), 4000 + HTTP status for request errors (4401, 4403, 4404,
  4422). Every close is preceded by an `{"op": "error"}` message saying why.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The standalone jobcast server."""
    jc = Jobcast(settings)
    app = FastAPIOffline(  # /docs and /redoc from packaged assets: they work offline
        title="jobcast",
        version=__version__,
        summary="Real-time job progress and event streaming",
        description=API_DESCRIPTION,
        lifespan=jc.lifespan,
        static_url="/static-docs",
    )
    jc.install(app, app_wide=True)  # the whole app is jobcast's
    return app
