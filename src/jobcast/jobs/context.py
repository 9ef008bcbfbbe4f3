"""What a handler receives: :class:`JobContext`, its window onto the job it runs."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from jobcast.errors import InvalidInput
from jobcast.jobs.batches import CHILDREN
from jobcast.jobs.input_wait import NO_DEFAULT
from jobcast.jobs.metadata import JobMetadata, MetadataBuffer
from jobcast.jobs.model import InputFile, Job

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import BaseModel

    from jobcast.outputs.job_output import JobOutputs, OutputStream


T = TypeVar("T")

#: How often a sync handler waiting for input checks whether its job was cancelled (N6).
SYNC_CANCEL_CHECK = 0.2


class JobCancelled(Exception):
    """Raised inside a handler once its job was cancelled (or is over, e.g. timed out)."""


class JobSink(Protocol):
    """Where a context's reports go: the embedded runner's live job, or a remote worker's."""

    @property
    def cancel_requested(self) -> bool: ...

    def report_progress(self, progress: float, message: str | None, stage: str | None) -> None: ...

    def report_event(self, event_type: str, data: Any) -> None: ...

    def change_metadata(self, update: Callable[[MetadataBuffer], None]) -> None: ...

    async def wait_for_input(
        self,
        name: str,
        schema: dict[str, Any],
        *,
        prompt: str | None,
        seconds: float,
        default: Any,
        keep_slot: bool = False,
    ) -> Any: ...


class ChildSpawner(Protocol):
    """What ``ctx.spawn`` needs: ``spawn.Children``, one per run."""

    @property
    def spawned(self) -> int: ...

    def blend(self, own: float) -> float: ...

    def allow_failures(self) -> None: ...

    async def spawn(
        self,
        kind: str,
        params: Any = None,
        *,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> Job: ...


class JobContext:
    """A running job, as its handler sees it. Every method is safe from any thread.

    ``progress()`` is cheap enough to call in a tight loop: it only records the latest report;
    the runner publishes and stores the latest one at a bounded rate.
    """

    def __init__(
        self,
        sink: JobSink,
        *,
        job_id: str,
        kind: str,
        owner: str,
        params: dict[str, Any],
        input: InputFile | None = None,
        input_path: Path | None = None,
        attempt: int = 1,
        max_attempts: int = 1,
        outputs: JobOutputs | None = None,
        children: ChildSpawner | None = None,
    ) -> None:
        self._sink = sink
        # The loop that runs the job: a sync handler's thread waits for input through it.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._loop_thread = threading.get_ident()
        self._outputs = outputs
        self._children = children
        self.job_id = job_id
        self.kind = kind
        self.owner = owner
        #: The params as submitted (validated); the handler's second argument may be a model.
        self.params = params
        #: The uploaded file's description, when the job was submitted with one.
        self.input = input
        #: Where the uploaded file lies on disk, when there is one. Read it; do not move it.
        self.input_path = input_path
        #: This run's number (1 for the first) and how many runs the job may have in all
        #: (``retry.py``): a handler may do less on its last attempt, or say so.
        self.attempt = attempt
        self.max_attempts = max_attempts
        #: The job's metadata (``metadata.py``): ``set``, ``merge``, ``append``,
        #: ``increment``, ``remove``; coalesced like progress, so cheap in a loop.
        self.metadata: JobMetadata = _HandlerMetadata(self._change_metadata)

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested; long loops should check it and stop."""
        return self._sink.cancel_requested

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._sink.cancel_requested:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def progress(
        self, percent: float, message: str | None = None, stage: str | None = None
    ) -> None:
        """Report progress (0-100; it never goes backwards), with an optional message and stage.

        Raises :class:`JobCancelled` once the job was cancelled, so a handler that reports
        progress stops at its next report even if it never checks.
        """
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise TypeError("progress must be a number from 0 to 100")
        if not math.isfinite(percent) or not 0 <= percent <= 100:
            raise ValueError(f"progress must be from 0 to 100, not {percent!r}")
        self.check_cancelled()
        progress = float(percent)
        if self._children is not None and self._children.spawned:  # batches.G8
            progress = self._children.blend(progress)
        self._sink.report_progress(progress, _text(message, 1000), _text(stage, 200))

    def publish(self, event_type: str, data: Any = None) -> None:
        """Publish a custom event on the job's topic (``jobs/{id}``), after earlier reports.

        ``data`` must be JSON-serialisable; subscribers receive ``{"id", "seq", "data"}``.
        """
        self.check_cancelled()
        self._sink.report_event(event_type, data)

    def wait_for_input(
        self,
        name: str,
        *,
        schema: type[BaseModel] | dict[str, Any] | None = None,
        prompt: str | None = None,
        timeout: float = 3600.0,
        default: Any = NO_DEFAULT,
    ) -> Any:
        """Wait for a person (or a service) to give the input ``name`` through
        ``POST /api/jobs/{id}/input``; the job shows the request meanwhile (``waiting``)
        (``input_wait.py``, N1-N10).

        An ``async`` handler awaits it (``await ctx.wait_for_input(...)``) and gives its runner
        slot back while it waits; a sync handler calls it (``ctx.wait_for_input(...)``): it
        blocks its thread until the answer, the timeout or a cancel (:class:`JobCancelled`),
        keeping its slot (N6). A re-runnable handler (``retry_safe``, or a retry policy) on
        ``jobcast worker``, or a sync one, parks instead (N7): its run ends here and the
        answer or the timeout runs it again from the start, every given input replayed.

        ``schema``: a pydantic model (the value is returned as one) or a JSON schema (the
        value as JSON); a value that fails it is refused with 422 and changes nothing.
        ``timeout``: seconds; then ``default`` is returned if given, else the job fails with
        :class:`~jobcast.jobs.input_wait.InputTimeout`. After a restart a re-run handler gets
        the inputs already given at once (N3): declare it ``retry_safe``. Do not catch
        :class:`~jobcast.jobs.input_wait.Parked` (a ``BaseException``, as a cancel is).
        """
        self.check_cancelled()
        in_thread = self._in_thread()
        waiting = self._wait_for_input(name, schema, prompt, timeout, default, in_thread)
        return self._blocking(waiting) if in_thread else waiting  # N6

    async def _wait_for_input(
        self,
        name: str,
        schema: type[BaseModel] | dict[str, Any] | None,
        prompt: str | None,
        seconds: float,
        default: Any,
        keep_slot: bool,
    ) -> Any:
        model = schema if isinstance(schema, type) else None
        json_schema: dict[str, Any] = {}
        if model is not None:
            json_schema = model.model_json_schema()
        elif isinstance(schema, dict):
            json_schema = dict(schema)
        value = await self._sink.wait_for_input(
            name,
            json_schema,
            prompt=_text(prompt, 2000),
            seconds=seconds,
            default=default,
            keep_slot=keep_slot,
        )
        if model is not None and value is not default:
            return model.model_validate(value)
        return value

    def spawn(
        self,
        kind: str,
        params: Any = None,
        *,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> Any:
        """Queue a child job of this one (same owner, ``parent_id`` set); its snapshot (a
        :class:`~jobcast.jobs.model.Job`) is what an ``async`` handler awaits
        (``await ctx.spawn(...)``) and what a sync handler's call returns (``spawn.py``,
        S1-S5). This job's progress then weighs its children's with its own reports, its
        metadata counts them under ``children`` (``{"succeeded", "failed", "cancelled",
        "total", "allow_failures"}``, a key only jobcast writes: batches.G9), and it ends only
        after every child ended: failed if any failed, unless :meth:`allow_child_failures`
        (``batches.py`` G6-G10). A run after a retry or a restart gets its earlier children
        back in spawn order instead of new ones (S2).
        """
        self.check_cancelled()
        if self._children is None:
            raise RuntimeError("jobs cannot spawn children where this job runs")
        spawning = self._children.spawn(
            kind, params, tags=tags, metadata=metadata, priority=priority
        )
        return self._blocking(spawning) if self._in_thread() else spawning

    def allow_child_failures(self) -> None:
        """Let this job's children fail without failing it (``spawn.S5``, batches.G10), as a
        batch's ``allow_failures`` does: it ends ``succeeded`` (if its handler did) with the
        failed children counted in ``metadata["children"]["failed"]``. Call it before or after
        spawning, from any thread; once stored it stays on for the job's later runs."""
        if self._children is None:
            raise RuntimeError("jobs cannot spawn children where this job runs")
        self._children.allow_failures()

    def _in_thread(self) -> bool:
        """Whether a sync handler's thread calls (not the job's event loop)."""
        return self._loop is not None and threading.get_ident() != self._loop_thread

    def _blocking(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the job's loop and wait for it in this (a sync handler's) thread,
        noticing a cancel within ``SYNC_CANCEL_CHECK`` seconds (input_wait.N6)."""
        if self._loop is None:
            raise RuntimeError("the job's event loop is gone")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        while True:
            try:
                return future.result(timeout=SYNC_CANCEL_CHECK)
            except TimeoutError:
                if self._sink.cancel_requested:
                    future.cancel()
                    raise JobCancelled(f"job {self.job_id} was cancelled") from None

    def _change_metadata(self, update: Callable[[MetadataBuffer], None]) -> None:
        self.check_cancelled()
        self._sink.change_metadata(update)

    def stream(self, name: str = "output", content_type: str = "text/plain") -> OutputStream:
        """The job's output stream ``name`` (opened on first use): ``write`` text, bytes, or
        for ``application/json`` JSON values, as often as you like; it closes when the job
        ends. Readers get it at ``/v1/stream/jobs/{id}/{name}`` (Durable Streams), resuming
        at any offset, and the job's snapshot lists it (``outputs/job_output.py``)."""
        if self._outputs is None:
            raise RuntimeError("output streams are not available where this job runs")
        return self._outputs.open(name, content_type)


class _HandlerMetadata(JobMetadata):
    """``ctx.metadata``, with the key of the job's children's counts left to jobcast
    (batches.G9): a handler's keys and the counts never overwrite each other."""

    def set(self, key: str, value: Any) -> None:
        super().set(_own_key(key), value)

    def merge(self, values: Mapping[str, Any]) -> None:
        if isinstance(values, Mapping) and CHILDREN in values:
            _own_key(CHILDREN)
        super().merge(values)

    def append(self, key: str, item: Any) -> None:
        super().append(_own_key(key), item)

    def increment(self, key: str, amount: float = 1) -> None:
        super().increment(_own_key(key), amount)

    def remove(self, key: str) -> None:
        super().remove(_own_key(key))


def _own_key(key: str) -> str:
    if key == CHILDREN:
        raise InvalidInput(f"the metadata key {CHILDREN!r} holds the counts of the job's children")
    return key


def _text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("message and stage must be strings")
    return value[:limit]
