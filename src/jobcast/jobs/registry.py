"""Job handlers, registered by kind.

A handler module declares its own :class:`Registry` and decorates functions with it::

    from jobcast.jobs import JobContext, Registry

    registry = Registry()

    @registry.handler("transcribe", timeout=600, retry=RetryPolicy(max_attempts=3))
    async def transcribe(ctx: JobContext, params: dict) -> dict:
        ctx.progress(10, stage="loading")
        ...
        return {"words": 1234}

``jobcast serve --handlers mypkg.jobs`` imports the module and takes every handler of every
:class:`Registry` it defines (or calls its ``register(registry)`` function, if it has one).
Handlers may be ``async def`` (run on the event loop) or plain functions (run in a thread pool,
so a blocking handler never stalls the server). They return a JSON value or raise.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from jobcast.errors import InvalidInput
from jobcast.events import validate_type
from jobcast.jobs.retry import RetryPolicy

if TYPE_CHECKING:
    from jobcast.jobs.context import JobContext

Handler = Callable[["JobContext", Any], Any]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and how to run it."""

    kind: str
    fn: Handler
    #: Seconds before the job fails with a timeout; ``None``: the server's default.
    timeout: float | None = None
    #: Whether a run interrupted by a restart may simply run again (else it fails).
    retry_safe: bool = False
    #: Validates ``params`` at submission; the handler then receives the model instance.
    params_model: type[BaseModel] | None = None
    #: Whether the job needs an uploaded file (submitted as multipart).
    needs_input: bool = False
    #: How failed runs are retried (``retry.py``); ``None``: a failure is final.
    retry: RetryPolicy | None = None
    #: At most this many jobs of this kind run at once in one runner (the others stay
    #: queued, in order); ``None``: only the runner's own concurrency bounds them.
    concurrency: int | None = None

    @property
    def rerunnable(self) -> bool:
        """Whether a run interrupted by a restart may run again (lifecycle.R3): the handler
        said so, or declared a retry policy, which accepts repeated runs."""
        return self.retry_safe or self.retry is not None

    def default_max_attempts(self, server_default: int) -> int:
        """Runs a new job of this kind is given (retry.T2): its policy's, else the server's
        ``job_max_attempts`` for restarts of ``retry_safe`` handlers, else one."""
        if self.retry is not None:
            return self.retry.max_attempts
        return server_default if self.retry_safe else 1

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def validate_params(self, params: Any) -> dict[str, Any]:
        """The params as stored: validated and normalised by the model, if there is one."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be a JSON object")
        if self.params_model is None:
            return params
        try:
            model = self.params_model.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "params"
            raise InvalidInput(
                f"invalid params for {self.kind!r}: {where}: {first['msg']}"
            ) from None
        return model.model_dump(mode="json")

    def handler_params(self, params: dict[str, Any]) -> Any:
        """What the handler receives: the model instance, or the plain dict."""
        if self.params_model is None:
            return params
        return self.params_model.model_validate(params)


class Registry:
    """Handlers by kind. Each app has its own; handler modules each declare one."""

    def __init__(self, specs: Iterable[HandlerSpec] = ()) -> None:
        self._specs: dict[str, HandlerSpec] = {}
        for spec in specs:
            self.add(spec)

    def handler(
        self,
        kind: str,
        *,
        timeout: float | None = None,
        retry_safe: bool = False,
        params_model: type[BaseModel] | None = None,
        needs_input: bool = False,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``kind``."""

        def decorate(fn: Handler) -> Handler:
            spec = HandlerSpec(
                kind, fn, timeout, retry_safe, params_model, needs_input, retry, concurrency
            )
            self.add(spec)
            return fn

        return decorate

    def add(self, spec: HandlerSpec) -> None:
        validate_type(spec.kind)  # kinds follow the event-type alphabet: safe in logs and URLs
        if spec.timeout is not None and spec.timeout <= 0:
            raise ValueError(f"the timeout of {spec.kind!r} must be positive")
        if spec.concurrency is not None and spec.concurrency < 1:
            raise ValueError(f"the concurrency of {spec.kind!r} must be at least 1")
        if spec.kind in self._specs and self._specs[spec.kind] != spec:
            raise ValueError(f"a handler for {spec.kind!r} is already registered")
        self._specs[spec.kind] = spec

    def update(self, other: Registry) -> None:
        for spec in other._specs.values():
            self.add(spec)

    def get(self, kind: str) -> HandlerSpec:
        spec = self._specs.get(kind)
        if spec is None:
            known = ", ".join(sorted(self._specs)) or "none"
            raise InvalidInput(f"unknown job kind {kind[:64]!r} (known kinds: {known})")
        return spec

    def find(self, kind: str) -> HandlerSpec | None:
        return self._specs.get(kind)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._specs)

    def limits(self) -> dict[str, int]:
        """The ``concurrency`` of each kind that declares one."""
        return {k: s.concurrency for k, s in self._specs.items() if s.concurrency is not None}

    def load_module(self, name: str) -> None:
        """Import ``name`` (a dotted module name) and take its handlers."""
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"cannot import handler module {name!r}: {exc}") from exc
        found = False
        register = getattr(module, "register", None)
        if callable(register):
            register(self)
            found = True
        for value in vars(module).values():
            if isinstance(value, Registry) and value is not self:
                self.update(value)
                found = True
        if not found:
            raise ValueError(
                f"handler module {name!r} defines no Registry and no register(registry) function"
            )
