"""The asyncio (and trio, through anyio) client: the twin of ``Client``."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

import anyio
import httpx

from jobcast.client._base import (
    BaseClient,
    Call,
    FileSource,
    SubmitOptions,
    TokenSource,
    check_deadline,
    deadline_after,
    until,
)
from jobcast.client._errors import (
    ClientError,
    ConnectionFailed,
    ServerUnavailable,
    status_error,
    translate_transport,
)
from jobcast.client._models import Event, Job, JobPage, StreamItem
from jobcast.client._output import OutputReading, OutputTransport, SocketEnd, check_transport
from jobcast.client._policy import ReconnectPolicy
from jobcast.client._stream import StreamState


class AsyncClient(BaseClient):
    """An async jobcast client. Use it as an async context manager, or ``await aclose()``.

    >>> async with AsyncClient("http://127.0.0.1:8000", token=token) as client:
    ...     job = await client.submit("demo", {"steps": 3})
    ...     async for event in client.watch(job.id):
    ...         print(event)
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        token: TokenSource = None,
        timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token=token, timeout=timeout, reconnect=reconnect, headers=headers)
        self._http = httpx.AsyncClient(transport=transport, **self._client_options())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, call: Call) -> Any:
        to_close = None
        files = None
        if call.file is not None:
            name, content, to_close = self._open_file(call.file)
            files = {"file": (name, content)}
        try:
            with translate_transport(self.url):
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=tuple(call.params),
                    json=call.json,
                    data=call.data,
                    files=files,
                    headers=self._auth(),
                )
        finally:
            if to_close is not None:
                to_close.close()
        return self._read(response)

    # -- jobs -------------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        file: FileSource | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        run_at: datetime | str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Job:
        """Submit a job of ``kind``; with ``file``, upload it (multipart) as the job's input.

        ``idempotency_key``: a retried submission with the same key returns the first job;
        ``delay`` (seconds) or ``run_at`` start it later; ``priority`` (-100..100, higher
        first) orders it among queued jobs; ``max_attempts`` overrides its handler's retries;
        ``tags`` (up to 10) label it for filters; ``metadata`` is its initial metadata.
        """
        options = SubmitOptions(
            idempotency_key,
            delay,
            run_at,
            priority,
            max_attempts,
            tuple(tags) if tags is not None else None,
            metadata,
        )
        return Job.from_dict(await self._call(self._submit(kind, params, file, options)))

    async def rerun(self, job_id: str) -> Job:
        """Run a job again as a new job (linked by ``rerun_of``); its owner or an admin."""
        return Job.from_dict(await self._call(self._rerun(job_id)))

    async def get(self, job_id: str) -> Job:
        """The job's current snapshot."""
        return Job.from_dict(await self._call(Call("GET", f"/api/jobs/{job_id}")))

    async def list(
        self,
        *,
        state: str | Iterable[str] | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        tag: str | Iterable[str] | None = None,
        parent: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first, filtered by state(s), kind, owner, tag(s) (every
        tag must match) and batch (``parent``)."""
        return self._page(
            await self._call(self._list(state, kind, owner, limit, cursor, tag, parent))
        )

    async def cancel(self, job_id: str) -> Job:
        """Ask a queued or running job to stop (``ConflictError`` once it has finished)."""
        return Job.from_dict(await self._call(Call("POST", f"/api/jobs/{job_id}/cancel")))

    async def delete(self, job_id: str) -> None:
        """Delete a finished job and its upload."""
        await self._call(Call("DELETE", f"/api/jobs/{job_id}"))

    async def submit_batch(
        self,
        jobs: Iterable[Mapping[str, Any]],
        *,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        allow_failures: bool = False,
    ) -> Job:
        """Submit jobs (``{"kind", "params", ...}`` each) as one batch, all or none; returns
        its parent job, which follows them and ends once they all have (``failed`` if any
        failed, unless ``allow_failures``). Its jobs: ``list(parent=batch.id)``."""
        return Job.from_dict(await self._call(self._batch(jobs, tags, metadata, allow_failures)))

    async def share(self, job_id: str, subject: str, *, input: bool = False) -> Job:
        """Let ``subject`` read and watch a job (its owner or an admin may); ``input=True``:
        and give it input (``give_input``). Sharing again sets the permission anew."""
        return Job.from_dict(await self._call(self._share(job_id, subject, input=input)))

    async def unshare(self, job_id: str, subject: str) -> Job:
        """Withdraw a subject's access to a job (and its input permission)."""
        return Job.from_dict(await self._call(self._share(job_id, subject, input=None)))

    async def give_input(self, job_id: str, name: str, value: Any) -> Job:
        """Give a job that waits for input ``name`` its value (``ctx.wait_for_input``).

        ``BadRequest`` (422) when the value does not fit the request's schema (nothing
        changes); ``ConflictError`` (409) when the job no longer waits for it (another answer
        came first, or it timed out)."""
        return Job.from_dict(await self._call(self._input(job_id, name, value)))

    async def watch_jobs(
        self,
        *,
        tag: str | Iterable[str] | None = None,
        kind: str | None = None,
        state: str | Iterable[str] | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """A live job list, for ever: a ``snapshot`` event for each matching job, ``synced``,
        then a ``snapshot`` whenever one changes or appears and ``removed`` when one leaves.
        Keep a map by job id; after a reconnect the list is sent again, then ``synced``."""
        params = self._filter_params(state, kind, tag)
        state_ = StreamState(self.reconnect, job=False)
        path = "/api/jobs/live"
        async with contextlib.aclosing(self._stream(path, params, state_, None)) as items:
            async for item in items:
                yield item

    # A cancel scope cannot span an async generator's yields, hence a deadline, not fail_after.
    async def watch(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncGenerator[StreamItem, None]:
        """A job's events, from its snapshot to its terminal event; reconnects and polls.

        With ``timeout``, raises :class:`WaitTimeout` if the job has not finished by then.
        """
        deadline = deadline_after(timeout)
        state = StreamState(self.reconnect, job=True)
        path = f"/api/jobs/{job_id}/events"
        async with contextlib.aclosing(self._stream(path, [], state, deadline)) as items:
            async for item in items:
                yield item
                if not state.finished:
                    check_deadline(deadline)  # reads are bounded too: silence cannot overrun it
        if state.polling:
            async with contextlib.aclosing(self._poll(job_id, state, deadline)) as polled:
                async for item in polled:
                    yield item

    # Mirrors Client.wait(): reads and sleeps are bounded by the deadline (see watch()).
    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """Wait until the job finishes and return its final snapshot.

        Raises :class:`WaitTimeout` after ``timeout`` seconds (``None``: wait for ever).
        """
        async with contextlib.aclosing(self.watch(job_id, timeout=timeout)) as items:
            async for item in items:
                if isinstance(item, Event) and item.terminal and item.job is not None:
                    return item.job
        return await self.get(job_id)  # not reached: the stream ends with the terminal event

    # -- events -----------------------------------------------------------------------------

    def read_stream(
        self,
        job_id: str,
        name: str = "output",
        *,
        offset: str = "-1",
        live: bool = True,
        transport: OutputTransport = "http",
    ) -> AsyncOutputRead:
        """``Client.read_stream``'s twin: ``async for piece in client.read_stream(job_id)``.

        ``transport="ws"`` needs asyncio (not trio) and the ``ws`` extra (``_sockets``)."""
        reading = OutputReading(job_id, name, offset, live)
        if check_transport(transport) == "ws":
            from jobcast.client import _sockets  # noqa: F401 - a missing extra fails here, not later

            return AsyncOutputRead(self._read_output_socket(reading), reading)
        return AsyncOutputRead(self._read_output(reading), reading)

    async def _read_output(self, reading: OutputReading) -> AsyncGenerator[Any, None]:
        failures = 0
        timeout = httpx.Timeout(self.timeout, read=self.reconnect.read_timeout)
        while not reading.done:
            try:
                with translate_transport(self.url):
                    response = await self._http.get(
                        reading.path, params=reading.params(), headers=self._auth(), timeout=timeout
                    )
                if response.status_code >= 500:
                    raise status_error(response, response.content)
            except (ConnectionFailed, ServerUnavailable):
                failures += 1
                if (
                    self.reconnect.max_attempts is not None
                    and failures >= self.reconnect.max_attempts
                ):
                    raise
                await anyio.sleep(self.reconnect.delay(failures, None))
                continue
            if reading.not_open_yet(response):  # _output.S2
                if (await self.get(reading.job_id)).terminal:
                    return
                failures = min(failures + 1, 4)
                await anyio.sleep(self.reconnect.delay(failures, None))
                continue
            if response.status_code >= 400:
                raise status_error(response, response.content)
            failures = 0
            for item in reading.accept(response):
                yield item

    async def _read_output_socket(self, reading: OutputReading) -> AsyncGenerator[Any, None]:
        from jobcast.client import _sockets  # the ws extra, loaded when used

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # _sockets.W2
            raise RuntimeError("read_stream(transport='ws') needs asyncio: use 'http'") from None
        failures = 0
        while True:
            url = _sockets.socket_url(self.url, reading.socket_target())
            options = _sockets.connect_options({**self._headers, **self._auth()}, self.timeout)
            try:
                with _sockets.translated(url) as closed:
                    async with _sockets.connect_async(url, **options) as ws:
                        while not reading.done:
                            # No yield inside a cancel scope: only the receive is bounded.
                            with anyio.fail_after(self.reconnect.read_timeout):
                                message = await ws.recv()
                            for item in reading.receive(message):
                                yield item
            except (ConnectionFailed, ServerUnavailable):
                failures = 1 if reading.delivered else failures + 1
                limit = self.reconnect.max_attempts
                if limit is not None and failures >= limit:
                    raise
                await anyio.sleep(self.reconnect.delay(failures, None))
                continue
            end = reading.socket_closed(closed.code)  # _output.S4
            if end is SocketEnd.DONE:
                return
            if end is SocketEnd.NOT_OPEN_YET:  # _output.S2
                if (await self.get(reading.job_id)).terminal:
                    return
                failures = min(failures + 1, 4)
            else:
                failures = 0 if reading.delivered else failures + 1
                reading.check_attempts(failures, self.reconnect.max_attempts)
            await anyio.sleep(self.reconnect.delay(failures, None))

    async def publish(self, topic: str, type: str, data: Any = None) -> str:
        """Publish one event (needs a service or admin token); returns its id."""
        return self._published_id(await self._call(self._publish(topic, type, data)))

    async def subscribe(
        self, topics: str | Iterable[str], *, last_event_id: str | None = None
    ) -> AsyncGenerator[StreamItem, None]:
        """Iterate events on ``topics`` (names or ``prefix/*`` patterns) for ever.

        Resumes after ``last_event_id`` if given; reconnects by itself (see ``ReconnectPolicy``).
        """
        params = self._subscribe_params(topics)
        state = StreamState(self.reconnect, job=False, last_event_id=last_event_id)
        async with contextlib.aclosing(self._stream("/api/events", params, state, None)) as items:
            async for item in items:
                yield item

    # -- the read loops -----------------------------------------------------------------------

    async def _stream(
        self,
        path: str,
        params: builtins.list[tuple[str, str]],
        state: StreamState,
        deadline: float | None,
    ) -> AsyncGenerator[StreamItem, None]:
        policy = self.reconnect
        while not state.finished and not state.polling:
            headers = state.connecting(self._auth())
            opened = buffered = False
            error: ClientError | None = None
            response: httpx.Response | None = None
            try:
                with translate_transport(self.url):
                    request = self._http.build_request(
                        "GET",
                        path,
                        params=tuple(params),
                        headers=headers,
                        timeout=self._stream_timeout(
                            until(deadline, policy.read_timeout), deadline
                        ),
                    )
                    # No yield inside a cancel scope: open and read the first chunk in it.
                    chunks: AsyncIterator[str] | None = None
                    first = ""
                    with anyio.move_on_after(until(deadline, policy.first_byte_timeout)) as scope:
                        response = await self._http.send(request, stream=True)
                        if response.status_code >= 400:
                            raise status_error(response, await response.aread())
                        opened = True
                        self._check_event_stream(response)
                        chunks = response.aiter_text()
                        first = await anext(chunks, "")
                    buffered = scope.cancelled_caught
                    if chunks is not None and not buffered:
                        for item in state.feed(first):
                            yield item
                        async for text in chunks:
                            for item in state.feed(text):
                                yield item
                            if state.finished:
                                return
            except ClientError as exc:
                error = exc
            finally:
                if response is not None:
                    await response.aclose()
            if state.finished:  # the terminal event came in the first chunk
                return
            check_deadline(deadline)
            delay = state.ended(
                error, opened=opened, first_byte_timeout=buffered, credentials=self._auth
            )
            if delay:
                await anyio.sleep(until(deadline, delay))

    async def _poll(
        self, job_id: str, state: StreamState, deadline: float | None
    ) -> AsyncGenerator[StreamItem, None]:
        previous: Job | None = None
        failures = 0
        while True:
            try:
                body = await self._poll_once(job_id, deadline)
            except (ConnectionFailed, ServerUnavailable) as exc:
                failures += 1
                state.poll_failed(exc, failures)
                delay = self.reconnect.delay(failures, None)
            else:
                failures = 0
                state.connected = True
                job = Job.from_dict(body)
                event = self._polled(previous, job, body)
                previous = job
                if event is not None:
                    yield event
                    if event.terminal:
                        return
                delay = self.reconnect.poll_interval
            check_deadline(deadline)
            await anyio.sleep(until(deadline, delay))

    async def _poll_once(self, job_id: str, deadline: float | None) -> Any:
        """``GET`` the job, bounded like every read of a watch: a hung poll cannot overrun it."""
        with anyio.move_on_after(until(deadline, self.timeout)):
            return await self._call(Call("GET", f"/api/jobs/{job_id}"))
        raise ConnectionFailed(f"timed out talking to {self.url} (polling job {job_id})")


class AsyncOutputRead:
    """An output stream being read: ``async for`` it; ``offset`` is where it stands."""

    def __init__(self, items: AsyncGenerator[Any, None], reading: OutputReading) -> None:
        self._items = items
        self._reading = reading

    @property
    def offset(self) -> str:
        return self._reading.offset

    async def aclose(self) -> None:
        """Stop reading before the end: the connection (a socket, say) is closed now."""
        await self._items.aclose()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

    async def __anext__(self) -> Any:
        return await anext(self._items)
