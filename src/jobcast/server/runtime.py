"""The runtime of one jobcast service: what every route, stream and operation works with.

A :class:`Runtime` holds the settings, the authorization policy, the handler registry, the
token authority and the shared state (rate limits, spent tickets, metrics); its lifespan starts
the hub (with its broker), the job store and the runner, in that order, and stops them in
reverse. Routes and streams take a runtime, never the public facade (``app.Runtime``), so the
server's layers point one way: ``app`` builds routes over a runtime; nothing below imports it.

Nothing lives at module level: one process may run several independent runtimes (tests do).
The parts the lifespan starts are reached through properties that refuse use outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request

from jobcast.auth import Principal, TokenAuthority
from jobcast.config import Settings
from jobcast.hub import Hub
from jobcast.jobs import builtin
from jobcast.jobs.registry import Registry
from jobcast.jobs.runner import EmbeddedRunner
from jobcast.jobs.snapshots import JobSnapshots
from jobcast.outputs.readers import LiveReads
from jobcast.outputs.store import StreamStore
from jobcast.policy import Policy
from jobcast.server.deployment import Deployment
from jobcast.server.http.credentials import Credentials
from jobcast.server.http.ratelimit import RateLimiter
from jobcast.server.ops.logs import install_log_redaction, use_json_logs
from jobcast.server.ops.metrics import Metrics
from jobcast.server.ops.signals import drain_on_exit_signals
from jobcast.stores import JobStore, open_store
from jobcast.subscription import CloseReason
from jobcast.wire import ServerSentEvent, retry_frame

_bearer = HTTPBearer(auto_error=False, description="A JWT minted by `jobcast token`.")


class Runtime:
    """One jobcast service's parts, created together and started by :meth:`lifespan`."""

    def __init__(self, settings: Settings, *, policy: Policy | None = None) -> None:
        settings.check_extras()  # a missing optional dependency: one clear error, first
        self.settings = settings
        #: Every allow/deny decision (an application may pass its own subclass).
        self.policy = policy or Policy(settings.public_topics)
        #: Memory, SQLite or Redis: decided once, here (deployment.py).
        self.deployment = Deployment(settings)
        self.limiter = RateLimiter(settings, self.deployment.rate_limit_storage())
        self.spent_tickets = self.deployment.spent_tickets()
        self.metrics = Metrics(
            hub=lambda: self._hub,
            store=lambda: self._store,
            runner=lambda: self._runner,
            shared=self.deployment.shared_metrics,
        )
        self.credentials = Credentials(settings, lambda: self.tokens, self.spent_tickets)
        #: Job handlers by kind: the built-ins, the ``handlers`` modules, and any added later.
        self.registry = Registry()
        self.registry.update(builtin.registry)
        for module in settings.handlers:
            self.registry.load_module(module)
        self._hub: Hub | None = None
        self._tokens: TokenAuthority | None = None
        self._store: JobStore | None = None
        self._runner: EmbeddedRunner | None = None
        self._streams: StreamStore | None = None
        #: Live reads of output streams held at once (long-poll, SSE), bounded like streams.
        self.stream_reads = LiveReads(settings.max_streams_per_subject, settings.max_streams_total)
        #: The job snapshots open live lists share (``jobs/snapshots.py``).
        self.job_snapshots = JobSnapshots()

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("jobcast is not running: use it inside its lifespan")
        return self._hub

    @property
    def running_hub(self) -> Hub | None:
        """The hub while the lifespan runs, else ``None`` (for readiness and metrics)."""
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
    def streams(self) -> StreamStore:
        """Output streams (``/v1/stream``, ``ctx.stream``)."""
        if self._streams is None:
            raise RuntimeError("jobcast is not running: use it inside its lifespan")
        return self._streams

    @property
    def tokens(self) -> TokenAuthority:
        if self._tokens is None:
            self._tokens = TokenAuthority.from_settings(self.settings)
        return self._tokens

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        settings = self.settings
        _ = self.tokens  # create the secret now, not on the first request
        install_log_redaction()
        if settings.log_format == "json":
            use_json_logs()
        hub = self._hub = Hub(self.deployment.open_broker(), settings.hub_options())
        store = self._store = open_store(settings.resolved_store_url)
        streams = self._streams = self.deployment.open_stream_store()
        runner = self._runner = self.deployment.make_runner(store, hub, self.registry, streams)
        self.policy.job_access = runner.access_of
        # In order, each on those before it: the hub (its broker, and the runner's job access
        # as its observer), metrics, the store, the runner; stopped in reverse.
        async with contextlib.AsyncExitStack() as started:
            started.push_async_callback(self._stopped)
            await hub.start(observer=runner.access)
            started.push_async_callback(hub.close)
            await self.metrics.start()
            started.push_async_callback(self.metrics.close)
            await store.open()
            started.push_async_callback(store.close)
            await streams.open()
            started.push_async_callback(streams.close)
            await runner.start()
            started.push_async_callback(runner.close)
            with drain_on_exit_signals(hub, settings.shutdown_delay_seconds):
                yield

    async def _stopped(self) -> None:
        self._hub = self._store = self._runner = None
        self._streams = None
        await self.deployment.close()

    async def principal(
        self,
        request: Request,
        # The credentials a request may carry, declared for the API description; they are
        # read (in this order) by credentials.py.
        _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        _ticket: Annotated[
            str | None,
            Query(
                alias="ticket",
                description="A one-use stream ticket (`POST /api/auth/ticket`): opens a stream.",
            ),
        ] = None,
        _token: Annotated[
            str | None,
            Query(
                alias="token",
                description="A bearer token in the URL, for clients that cannot set headers "
                "(it ends up in logs: prefer a ticket).",
            ),
        ] = None,
    ) -> Principal | None:
        """The caller (see ``credentials.py``); ``None`` when the request carries none.

        Every jobcast route depends on this one callable, so an application's
        ``app.dependency_overrides[jc.principal]`` applies to all of them."""
        return await self.credentials.resolve(request)

    def closing_frame(self, reason: CloseReason) -> bytes:
        """How an SSE stream closed for ``reason`` ends (sse.E4)."""
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
