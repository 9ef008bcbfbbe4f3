"""Settings, read from ``JOBCAST_*`` environment variables (and a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobcast.brokers.base import Retention
from jobcast.brokers.redis_urls import is_redis, replication
from jobcast.extras import check_backends
from jobcast.hub import HubOptions
from jobcast.jobs.options import RunnerOptions
from jobcast.principal import Role
from jobcast.topics import TopicPattern

CommaList = Annotated[list[str], NoDecode]
#: ``name=role,name=role`` (or a JSON object) in the environment.
RoleMap = Annotated[dict[str, Role], NoDecode]

#: Of the shutdown grace period, kept for what follows the wait for running requests.
SHUTDOWN_RESERVE_SECONDS = 1.0


class Settings(BaseSettings):
    """Every knob of a jobcast server. Each field is ``JOBCAST_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="JOBCAST_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path(".jobcast"), description="Where the embedded default keeps state.")
    broker_url: str | None = Field(
        None,
        description="memory://, sqlite:///path, redis://host:port/db, "
        "redis+sentinel://host:port,.../service/db, redis+cluster://host:port,... or "
        "postgresql://user@host/db; "
        "default: the store's database when JOBCAST_STORE_URL is PostgreSQL, else SQLite file "
        "events.db in the data directory.",
    )

    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 secret for bearer tokens; default: a random secret created in "
        "the data directory (file jwt_secret, mode 0600).",
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    jwt_leeway_seconds: float = Field(30.0, ge=0, description="Clock skew allowed on exp/nbf.")
    jwt_public_key: str | None = Field(
        None, description="PEM public key for RS256/ES256 tokens of an identity provider."
    )
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of an identity provider (keys cached and refreshed)."
    )
    jwt_algorithms: CommaList = Field(
        default_factory=list,
        description="Accepted algorithms; default HS256, plus RS256 and ES256 when a public "
        "key or JWKS URL is set. 'none' is never accepted.",
    )
    jwt_subject_claim: str = Field(
        "sub",
        min_length=1,
        description="Identity provider tokens: the claim naming the subject (a dotted path "
        "allowed), e.g. preferred_username (Keycloak) or oid (Entra ID).",
    )
    jwt_roles_claim: str | None = Field(
        None,
        description="Identity provider tokens: the claim listing the roles, as a dotted path "
        "(realm_access.roles) or a namespaced name (https://example.com/roles); unset: the "
        "`role` claim of jobcast's own tokens.",
    )
    jwt_role_map: RoleMap = Field(
        default_factory=dict,
        description="The provider's role names to jobcast roles (user, service, admin), as "
        "name=role pairs, comma-separated (or a JSON object); empty: a name that is a jobcast "
        "role stands for itself.",
    )
    jwt_scope_roles: RoleMap = Field(
        default_factory=dict,
        description="OAuth scopes (`scp` or `scope` claim) to jobcast roles, as scope=role "
        "pairs, comma-separated; the most privileged role held wins, none: user.",
    )
    jwt_jwks_refresh_seconds: float = Field(
        300.0, gt=0, description="JWKS keys older than this are fetched again on next use."
    )
    jwt_jwks_min_refetch_seconds: float = Field(
        30.0,
        ge=0,
        description="A token with a key id not in the JWKS triggers a refetch (key rotation) "
        "at most this often; forged key ids are refused from the cache in between.",
    )
    ticket_ttl_seconds: float = Field(60.0, gt=0, le=3600, description="Stream ticket lifetime.")
    session_ttl_seconds: float = Field(8 * 3600.0, gt=0, description="Cookie session lifetime.")
    session_cookie_secure: bool = Field(
        False, description="Mark session cookies Secure (set it when serving over HTTPS)."
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser, comma-separated; 'dev' "
        "adds the usual local dev servers (localhost:5173, :3000, ...).",
    )
    csrf_exempt_paths: CommaList = Field(
        default_factory=list, description="Path prefixes exempt from the CSRF check."
    )
    rate_limit_publish: str = Field("1200/minute", description="Per subject and per IP.")
    rate_limit_submit: str = Field("300/minute", description="Job submissions, per subject and IP.")
    rate_limit_ticket: str = Field("120/minute", description="Ticket and session issues.")
    max_stream_seconds: float = Field(
        0.0,
        ge=0,
        description="End each stream cleanly within this many seconds (at a random point of "
        "the last tenth), with a retry hint, for hosts that cut long responses (e.g. 280 where "
        "the limit is 300 s); 0: never.",
    )
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, keep serving everything except new streams (with /ready "
        "answering 503) this long before closing the listener, so a load balancer that polls "
        "/ready stops routing here first; part of shutdown_grace_seconds.",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="`jobcast serve`: the most seconds from SIGTERM to exit; requests still "
        "running after it (and the delay) are cancelled. Keep it below the service manager's "
        "stop timeout.",
    )
    drain_retry_min_ms: int = Field(
        500, ge=0, description="Shortest reconnect delay a draining server tells a client."
    )
    drain_retry_max_ms: int = Field(
        5000,
        ge=0,
        description="Longest reconnect delay a draining server tells a client; each stream gets "
        "a random one in between, so clients do not all reconnect at once.",
    )
    max_streams_per_subject: int = Field(100, ge=1, description="Concurrent streams per subject.")
    max_streams_total: int = Field(50_000, ge=1, description="Concurrent streams per process.")
    public_topics: CommaList = Field(
        default_factory=list,
        description="Comma-separated patterns anyone may subscribe to without a token.",
    )

    public_stream_prefixes: CommaList = Field(
        default_factory=list,
        description="Path prefixes under /v1/stream/ that anyone may create, append to and "
        "read without a credential (e.g. 'demo/'); every other stream needs one.",
    )
    stream_long_poll_seconds: float = Field(
        20.0, gt=0, description="How long a long-poll read of a stream waits for data (204 after)."
    )
    stream_sse_seconds: float = Field(
        60.0,
        gt=0,
        description="An SSE read of a stream ends after this long (the client resumes), so "
        "caches in front can collapse readers.",
    )
    max_stream_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Most bytes one output stream may hold; an append past it is refused (413), "
        "and a job's output stream past it raises in the handler.",
    )

    heartbeat_interval: float = Field(15.0, gt=0, description="Seconds between heartbeats.")
    retry_ms: int = Field(3000, ge=0, description="The SSE retry hint sent at stream start.")
    send_timeout: float = Field(30.0, gt=0, description="A write stuck longer ends the stream.")
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Under `jobcast serve`: a request's headers, and the first byte of its "
        "body, must arrive within this many seconds of its first byte (of the connection's "
        "opening, for its first request); else the connection is closed (408 if headers were "
        "under way) and counted in jobcast_request_timeouts_total.",
    )
    max_pending_events: int = Field(1000, ge=1, description="Per-subscriber buffer bound.")
    conflate_types: CommaList = Field(
        default_factory=lambda: ["progress"],
        description="Event types where a slow subscriber gets only the latest per topic.",
    )
    max_topics_per_subscription: int = Field(
        50, ge=1, description="Topics and patterns one stream or socket may name."
    )
    max_replay_events: int = Field(10_000, ge=1, description="Beyond this a resume is a reset.")
    max_replay_bytes: int = Field(
        4 * 1024 * 1024, ge=1, description="Event data one resume may replay; beyond: a reset."
    )

    log_format: str = Field(
        "text",
        pattern="^(text|json)$",
        description="text, or json: one JSON object per log line (time, level, logger, "
        "message, request_id); `jobcast serve --log-format` sets it too.",
    )
    otel: bool = Field(
        False,
        description="OpenTelemetry spans for publishes, jobs (submit, each attempt, carried to "
        "workers) and stream opens, through the tracer provider the application configures "
        "(or `opentelemetry-instrument`); needs the otel extra. Off: no cost.",
    )
    metrics_snapshot_seconds: float = Field(
        5.0,
        ge=0,
        description="With the Redis broker: each process writes its metrics to Redis this "
        "often, so a scrape of any process reports every process (labelled `process`); 0: "
        "each process reports only its own.",
    )

    history_max_events_per_topic: int = Field(
        1000, ge=1, description="Events kept per topic for replay; older ones are dropped."
    )
    history_max_age_seconds: float = Field(
        86_400.0, gt=0, description="Events older than this are dropped from the history."
    )
    history_job_grace_seconds: float = Field(
        3600.0, ge=0, description="Redis: a job topic's history is kept this long after it ends."
    )

    max_event_bytes: int = Field(64 * 1024, ge=1, description="Largest `data` of one event.")
    max_batch_events: int = Field(100, ge=1, description="Most events in one publish call.")
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="Largest JSON request body.")

    store_url: str | None = Field(
        None,
        description="Job store (SQLAlchemy async URL); default: SQLite file jobs.db in the data "
        "directory (sqlite+aiosqlite:///<data_dir>/jobs.db).",
    )
    handlers: CommaList = Field(
        default_factory=list,
        description="Comma-separated modules whose job handlers to load (built-ins always are).",
    )
    job_concurrency: int = Field(4, ge=1, description="Jobs the embedded runner runs at once.")
    queue_url: str | None = Field(
        None,
        description="redis://host:port/db or postgresql://user@host/db: run jobs on `jobcast "
        "worker` processes (SAQ queue) instead of the embedded runner.",
    )
    worker_heartbeat_seconds: int = Field(
        10, ge=1, description="A worker silent this long is presumed dead; its job is retried."
    )
    celery_app: str | None = Field(
        None,
        description="module:attribute of the Celery app whose tasks `jobcast.integrations."
        "celery.track` reports: cancelling such a job revokes its task.",
    )
    celery_terminate: bool = Field(
        True,
        description="Cancelling a running Celery task terminates it (SIGTERM to its prefork "
        "child); off: only tasks not started yet are revoked.",
    )
    rq_redis_url: str | None = Field(
        None,
        description="The Redis of the RQ queues whose jobs `jobcast.integrations.rq` reports: "
        "cancelling such a job cancels or stops it.",
    )
    job_timeout_seconds: float = Field(
        3600.0, gt=0, description="Default per-job time limit; a handler may declare its own."
    )
    job_max_queued: int = Field(10_000, ge=1, description="Queued jobs beyond this get 503.")
    job_max_attempts: int = Field(
        3, ge=1, description="Most runs of a retry-safe job that restarts keep interrupting."
    )
    job_owner_concurrency: int | None = Field(
        None,
        ge=1,
        description="Most jobs of one owner running at once, across the embedded runner or "
        "every worker; unset: no limit per owner (per-kind limits still apply).",
    )
    idempotency_retention_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="How long an Idempotency-Key keeps returning its job or its publish's ids; "
        "after that the key is free again.",
    )
    job_progress_interval: float = Field(
        0.1, ge=0, description="Least seconds between two progress events of one job."
    )
    job_store_interval: float = Field(
        0.25, ge=0, description="Least seconds between two progress writes of one job."
    )
    max_upload_bytes: int = Field(
        1024 * 1024 * 1024, ge=1, description="Largest uploaded file of a job (413 past it)."
    )
    upload_content_types: CommaList = Field(
        default_factory=list,
        description="Comma-separated content types an upload may have (empty: any).",
    )
    ws_max_message_bytes: int = Field(
        64 * 1024, ge=1, description="Largest WebSocket message a client may send."
    )
    ws_max_messages_per_second: int = Field(
        50, ge=1, description="A WebSocket client sending faster is closed (code 1008)."
    )
    ws_auth_timeout: float = Field(
        10.0, gt=0, description="Seconds a WebSocket client has to send its token message."
    )
    ws_compression: bool = Field(
        False,
        description="Offer permessage-deflate to WebSocket clients (`jobcast serve`). Off: "
        "compressing costs about 40 KB per connection and CPU per message and per client, "
        "while events are small and encoded once for everyone.",
    )

    @field_validator(
        "public_topics",
        "conflate_types",
        "handlers",
        "upload_content_types",
        "jwt_algorithms",
        "cors_origins",
        "csrf_exempt_paths",
        "public_stream_prefixes",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_role_map", "jwt_scope_roles", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("{"):
            return orjson.loads(value)
        pairs: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            name, equals, role = item.rpartition("=")
            if not equals or not name.strip():
                raise ValueError(f"expected name=role, got {item.strip()!r}")
            pairs[name.strip()] = role.strip()
        return pairs

    @model_validator(mode="after")
    def _ordered_windows(self) -> Settings:
        if self.drain_retry_max_ms < self.drain_retry_min_ms:
            raise ValueError("drain_retry_max_ms must not be below drain_retry_min_ms")
        if self.shutdown_delay_seconds >= self.shutdown_grace_seconds:
            raise ValueError("shutdown_delay_seconds must be below shutdown_grace_seconds")
        return self

    @field_validator("broker_url")
    @classmethod
    def _valid_broker_url(cls, value: str | None) -> str | None:
        if value and is_redis(value):
            replication(value)  # a Cluster URL cannot ask for ``wait``
        return value

    @field_validator("public_topics")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for text in value:
            TopicPattern.parse(text)
        return value

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL; without one, a PostgreSQL store's database holds the events too
        (so instances that share the store share the events), else the SQLite file."""
        if self.broker_url:
            return self.broker_url
        if self.store_url and self.store_url.startswith(("postgresql", "postgres:")):
            return self.store_url
        return f"sqlite:///{self.data_dir / 'events.db'}"

    @property
    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'jobs.db'}"

    def check_extras(self) -> None:
        """Raise :class:`~jobcast.errors.MissingExtra` if a configured backend's optional
        dependency is not installed (``extras.py``): called before anything starts."""
        check_backends(
            self.resolved_broker_url, self.resolved_store_url, self.queue_url, tracing=self.otel
        )

    def retention(self) -> Retention:
        return Retention(
            self.history_max_events_per_topic,
            self.history_max_age_seconds,
            self.history_job_grace_seconds,
        )

    def runner_options(self) -> RunnerOptions:
        return RunnerOptions(
            uploads_dir=self.data_dir / "uploads",
            concurrency=self.job_concurrency,
            default_timeout=self.job_timeout_seconds,
            progress_interval=self.job_progress_interval,
            store_interval=self.job_store_interval,
            max_queued=self.job_max_queued,
            max_attempts=self.job_max_attempts,
            max_event_bytes=self.max_event_bytes,
            tracing=self.otel,
            idempotency_retention=self.idempotency_retention_seconds,
            owner_concurrency=self.job_owner_concurrency,
        )

    def hub_options(self) -> HubOptions:
        return HubOptions(
            heartbeat_interval=self.heartbeat_interval,
            max_pending=self.max_pending_events,
            conflate_types=frozenset(self.conflate_types),
            max_replay=self.max_replay_events,
            max_replay_bytes=self.max_replay_bytes,
            max_stream_seconds=self.max_stream_seconds,
            max_per_owner=self.max_streams_per_subject,
            max_total=self.max_streams_total,
            send_timeout=self.send_timeout,
            drain_retry_ms=(self.drain_retry_min_ms, self.drain_retry_max_ms),
            tracing=self.otel,
        )

    def graceful_shutdown_timeout(self) -> float:
        """Seconds the server waits for running requests once it stops listening: what is
        left of the grace period after the readiness delay and a reserve for what follows
        (the server's own steps, closing the runner, the store and the broker, exiting)."""
        left = self.shutdown_grace_seconds - self.shutdown_delay_seconds
        return max(0.1, left - SHUTDOWN_RESERVE_SECONDS)
