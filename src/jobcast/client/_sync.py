"""The blocking client."""

from __future__ import annotations

import builtins
import contextlib
import socket
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

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


class Client(BaseClient):
    """A blocking jobcast client. Use it as a context manager, or call ``close()``.

    >>> with Client("http://127.0.0.1:8000", token=token) as client:
    ...     job = client.submit("demo", {"steps": 3})
    ...     for event in client.watch(job.id):
    ...         print(event.type, event.data)
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        token: TokenSource = None,
        timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token=token, timeout=timeout, reconnect=reconnect, headers=headers)
        self._http = httpx.Client(transport=transport, **self._client_options())

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: Call, timeout: float | None = None) -> Any:
        """Send ``call``; ``timeout`` (seconds) overrides the client's, as a deadline needs."""
        to_close = None
        files = None
        if call.file is not None:
            name, content, to_close = self._open_file(call.file)
            files = {"file": (name, content)}
        try:
            with translate_transport(self.url):
                response = self._http.request(
                    call.method,
                    call.path,
                    params=tuple(call.params),
                    json=call.json,
                    data=call.data,
                    files=files,
                    headers=self._auth(),
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
        finally:
            if to_close is not None:
                to_close.close()
        return self._read(response)

    # -- jobs -------------------------------------------------------------------------------

    def submit(
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
        return Job.from_dict(self._call(self._submit(kind, params, file, options)))

    def rerun(self, job_id: str) -> Job:
        """Run a job again as a new job (linked by ``rerun_of``); its owner or an admin."""
        return Job.from_dict(self._call(self._rerun(job_id)))

    def get(self, job_id: str) -> Job:
        """The job's current snapshot."""
        return Job.from_dict(self._call(Call("GET", f"/api/jobs/{job_id}")))

    def list(
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
        return self._page(self._call(self._list(state, kind, owner, limit, cursor, tag, parent)))

    def cancel(self, job_id: str) -> Job:
        """Ask a queued or running job to stop (``ConflictError`` once it has finished)."""
        return Job.from_dict(self._call(Call("POST", f"/api/jobs/{job_id}/cancel")))

    def delete(self, job_id: str) -> None:
        """Delete a finished job and its upload."""
        self._call(Call("DELETE", f"/api/jobs/{job_id}"))

    def submit_batch(
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
        return Job.from_dict(self._call(self._batch(jobs, tags, metadata, allow_failures)))

    def share(self, job_id: str, subject: str, *, input: bool = False) -> Job:
        """Let ``subject`` read and watch a job (its owner or an admin may); ``input=True``:
        and give it input (``give_input``). Sharing again sets the permission anew."""
        return Job.from_dict(self._call(self._share(job_id, subject, input=input)))

    def unshare(self, job_id: str, subject: str) -> Job:
        """Withdraw a subject's access to a job (and its input permission)."""
        return Job.from_dict(self._call(self._share(job_id, subject, input=None)))

    def give_input(self, job_id: str, name: str, value: Any) -> Job:
        """Give a job that waits for input ``name`` its value (``ctx.wait_for_input``).

        ``BadRequest`` (422) when the value does not fit the request's schema (nothing
        changes); ``ConflictError`` (409) when the job no longer waits for it (another answer
        came first, or it timed out)."""
        return Job.from_dict(self._call(self._input(job_id, name, value)))

    def watch_jobs(
        self,
        *,
        tag: str | Iterable[str] | None = None,
        kind: str | None = None,
        state: str | Iterable[str] | None = None,
    ) -> Iterator[StreamItem]:
        """A live job list, for ever: a ``snapshot`` event for each matching job, ``synced``,
        then a ``snapshot`` whenever one changes or appears and ``removed`` when one leaves.
        Keep a map by job id; after a reconnect the list is sent again, then ``synced``."""
        params = self._filter_params(state, kind, tag)
        return self._stream("/api/jobs/live", params, StreamState(self.reconnect, job=False), None)

    def watch(self, job_id: str, *, timeout: float | None = None) -> Iterator[StreamItem]:
        """A job's events, from its snapshot to its terminal event; reconnects and polls.

        With ``timeout``, raises :class:`WaitTimeout` if the job has not finished by then.
        """
        return self._job_stream(job_id, deadline_after(timeout))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job finishes and return its final snapshot.

        Raises :class:`WaitTimeout` after ``timeout`` seconds (``None``: wait for ever).
        """
        for item in self.watch(job_id, timeout=timeout):
            if isinstance(item, Event) and item.terminal and item.job is not None:
                return item.job
        return self.get(job_id)  # not reached: the stream ends with the terminal event

    # -- events -----------------------------------------------------------------------------

    def publish(self, topic: str, type: str, data: Any = None) -> str:
        """Publish one event (needs a service or admin token); returns its id."""
        return self._published_id(self._call(self._publish(topic, type, data)))

    def subscribe(
        self, topics: str | Iterable[str], *, last_event_id: str | None = None
    ) -> Iterator[StreamItem]:
        """Iterate events on ``topics`` (names or ``prefix/*`` patterns) for ever.

        Resumes after ``last_event_id`` if given; reconnects by itself (see ``ReconnectPolicy``).
        """
        params = self._subscribe_params(topics)
        state = StreamState(self.reconnect, job=False, last_event_id=last_event_id)
        return self._stream("/api/events", params, state, None)

    def read_stream(
        self,
        job_id: str,
        name: str = "output",
        *,
        offset: str = "-1",
        live: bool = True,
        transport: OutputTransport = "http",
    ) -> OutputRead:
        """Iterate a job's output stream (``ctx.stream``): text pieces for ``text/*``, messages
        for ``application/json``, else bytes, live until the stream closes (``live=False``:
        what is there now). Resumes by itself across reconnects; ``.offset`` is where the
        read stands, to pass back as ``offset`` later (``_output.py``). ``transport="ws"``
        reads it over a WebSocket (the ``ws`` extra) instead of HTTP long-polls: the same
        items, the same resume (``_output.S4``)."""
        reading = OutputReading(job_id, name, offset, live)
        if check_transport(transport) == "ws":
            from jobcast.client import _sockets  # noqa: F401 - a missing extra fails here, not later

            return OutputRead(self._read_output_socket(reading), reading)
        return OutputRead(self._read_output(reading), reading)

    # -- the read loops -----------------------------------------------------------------------

    def _read_output(self, reading: OutputReading) -> Generator[Any, None, None]:
        failures = 0
        timeout = httpx.Timeout(self.timeout, read=self.reconnect.read_timeout)
        while not reading.done:
            try:
                with translate_transport(self.url):
                    response = self._http.get(
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
                time.sleep(self.reconnect.delay(failures, None))
                continue
            if reading.not_open_yet(response):  # _output.S2
                if self.get(reading.job_id).terminal:
                    return
                failures = min(failures + 1, 4)
                time.sleep(self.reconnect.delay(failures, None))
                continue
            if response.status_code >= 400:
                raise status_error(response, response.content)
            failures = 0
            yield from reading.accept(response)

    def _read_output_socket(self, reading: OutputReading) -> Generator[Any, None, None]:
        from jobcast.client import _sockets  # the ws extra, loaded when used

        failures = 0
        while True:
            url = _sockets.socket_url(self.url, reading.socket_target())
            options = _sockets.connect_options({**self._headers, **self._auth()}, self.timeout)
            try:
                with (
                    _sockets.translated(url) as closed,
                    _sockets.connect_sync(url, **options) as ws,
                ):
                    while not reading.done:
                        message = ws.recv(timeout=self.reconnect.read_timeout)
                        yield from reading.receive(message)
            except (ConnectionFailed, ServerUnavailable):
                failures = 1 if reading.delivered else failures + 1
                limit = self.reconnect.max_attempts
                if limit is not None and failures >= limit:
                    raise
                time.sleep(self.reconnect.delay(failures, None))
                continue
            end = reading.socket_closed(closed.code)  # _output.S4
            if end is SocketEnd.DONE:
                return
            if end is SocketEnd.NOT_OPEN_YET:  # _output.S2
                if self.get(reading.job_id).terminal:
                    return
                failures = min(failures + 1, 4)
            else:
                failures = 0 if reading.delivered else failures + 1
                reading.check_attempts(failures, self.reconnect.max_attempts)
            time.sleep(self.reconnect.delay(failures, None))

    def _job_stream(self, job_id: str, deadline: float | None) -> Iterator[StreamItem]:
        state = StreamState(self.reconnect, job=True)
        for item in self._stream(f"/api/jobs/{job_id}/events", [], state, deadline):
            yield item
            if not state.finished:
                check_deadline(deadline)  # reads are bounded too: silence cannot overrun it
        if state.polling:
            yield from self._poll(job_id, state, deadline)

    def _stream(
        self,
        path: str,
        params: builtins.list[tuple[str, str]],
        state: StreamState,
        deadline: float | None,
    ) -> Iterator[StreamItem]:
        policy = self.reconnect
        while not state.finished and not state.polling:
            headers = state.connecting(self._auth())
            opened = False
            watchdog = _Watchdog()
            error: ClientError | None = None
            try:
                with translate_transport(self.url):
                    request = self._http.build_request(
                        "GET",
                        path,
                        params=tuple(params),
                        headers=headers,
                        timeout=self._stream_timeout(
                            until(deadline, policy.first_byte_timeout), deadline
                        ),
                    )
                    response = self._http.send(request, stream=True)
                    try:
                        if response.status_code >= 400:
                            raise status_error(response, response.read())
                        opened = True
                        self._check_event_stream(response)
                        # The headers had to come within first_byte_timeout. The transport
                        # reads the request's timeout when the body's first read starts, so
                        # the body may be silent up to read_timeout (heartbeats); its first
                        # byte is held to first_byte_timeout by the watchdog instead. httpx
                        # has no per-read timeout; httpcore reads this extension on every
                        # body read, and tests/test_client_streams.py pins that (a sync
                        # stream quiet for longer than first_byte_timeout).
                        read = until(deadline, policy.read_timeout)
                        request.extensions["timeout"] = {
                            **request.extensions["timeout"],
                            "read": read,
                        }
                        watchdog.start(response, until(deadline, policy.first_byte_timeout))
                        for text in response.iter_text():
                            watchdog.cancel()
                            yield from state.feed(text)
                            if state.finished:
                                return
                    finally:
                        watchdog.cancel()
                        response.close()
            except ClientError as exc:
                error = exc
            buffered = watchdog.fired or (not state.got_bytes and _timed_out(error))
            check_deadline(deadline)
            delay = state.ended(
                error, opened=opened, first_byte_timeout=buffered, credentials=self._auth
            )
            if delay:
                time.sleep(until(deadline, delay))

    def _poll(
        self, job_id: str, state: StreamState, deadline: float | None
    ) -> Iterator[StreamItem]:
        previous: Job | None = None
        failures = 0
        while True:
            try:
                # Bounded like every read of a watch: a poll that hangs cannot overrun it.
                body = self._call(Call("GET", f"/api/jobs/{job_id}"), until(deadline, self.timeout))
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
            time.sleep(until(deadline, delay))


class _Watchdog:
    """Ends a response whose first body byte does not come in time (a buffering proxy).

    A blocking read cannot be given a separate timeout for its first byte, so a timer shuts
    the socket down, which wakes the read.
    """

    def __init__(self) -> None:
        self.fired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self, response: httpx.Response, seconds: float) -> None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return  # not a socket (an in-process transport): nothing can buffer it

        def fire() -> None:
            with self._lock:  # a byte that arrived just now wins over the timer
                if self._timer is None:
                    return
                self.fired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            with self._lock:
                self._timer.cancel()
                self._timer = None


def _timed_out(error: ClientError | None) -> bool:
    return isinstance(error, ConnectionFailed) and isinstance(error.__cause__, httpx.ReadTimeout)


class OutputRead:
    """An output stream being read: iterate it; ``offset`` is where it stands (_output.S3)."""

    def __init__(self, items: Generator[Any, None, None], reading: OutputReading) -> None:
        self._items = items
        self._reading = reading

    @property
    def offset(self) -> str:
        return self._reading.offset

    def close(self) -> None:
        """Stop reading before the end: the connection (a socket, say) is closed now."""
        self._items.close()

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def __next__(self) -> Any:
        return next(self._items)
