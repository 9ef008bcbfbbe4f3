"""What both clients share: configuration, request building, response reading, polling."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from jobcast.client._errors import ProtocolError, WaitTimeout, status_error
from jobcast.client._models import Event, Job, JobPage
from jobcast.client._policy import ReconnectPolicy

#: A bearer token, or a function returning a fresh one (called for every request).
TokenSource = str | Callable[[], str] | None
#: A file to upload: a path, an open binary file, or ``(filename, content)``.
FileSource = str | os.PathLike[str] | IO[bytes] | tuple[str, bytes | IO[bytes]]

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Call:
    """A request, built once; the twins only send it."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    data: dict[str, str] | None = None
    file: FileSource | None = None


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """How a submission is scheduled and retried (all optional; the server validates)."""

    idempotency_key: str | None = None
    #: Seconds to wait before the job may start, or a time (aware datetime or ISO 8601 text).
    delay: float | None = None
    run_at: datetime | str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    #: Up to 10 short labels, for ``list(tag=...)`` and ``watch_jobs(tag=...)``.
    tags: tuple[str, ...] | None = None
    #: The job's initial metadata (a JSON object).
    metadata: Mapping[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The body fields of ``POST /api/jobs`` for the options that are set."""
        run_at = self.run_at.isoformat() if isinstance(self.run_at, datetime) else self.run_at
        values = {
            "idempotency_key": self.idempotency_key,
            "delay_seconds": self.delay,
            "run_at": run_at,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "tags": list(self.tags) if self.tags is not None else None,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
        }
        return {name: value for name, value in values.items() if value is not None}


class BaseClient:
    """Configuration and the I/O-free half of every method; subclasses do the I/O."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: TokenSource = None,
        timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = check_url(url).rstrip("/")
        #: Assign a fresh token at any time (after a ``Reauth``, say); the next request uses it.
        self.token: TokenSource = check_token(token) if isinstance(token, str) else token
        self.timeout = timeout
        self.reconnect = reconnect or ReconnectPolicy()
        self._headers = dict(headers or {})

    def _client_options(self) -> dict[str, Any]:
        return {"base_url": self.url, "timeout": self.timeout, "headers": self._headers}

    def _auth(self) -> dict[str, str]:
        token = self.token() if callable(self.token) else self.token
        return {"Authorization": f"Bearer {check_token(token)}"} if token else {}

    def _stream_timeout(self, first: float, deadline: float | None) -> httpx.Timeout:
        return httpx.Timeout(until(deadline, self.timeout), read=first)

    # -- building requests ------------------------------------------------------------------

    @staticmethod
    def _submit(
        kind: str,
        params: Mapping[str, Any] | None,
        file: FileSource | None,
        options: SubmitOptions | None = None,
    ) -> Call:
        extra = options.fields() if options is not None else {}
        if file is None:
            body = {"kind": kind, "params": dict(params or {}), **extra}
            return Call("POST", "/api/jobs", json=body)
        data = {"kind": kind, "params": json.dumps(dict(params or {}))}
        data.update(
            {
                name: json.dumps(value) if isinstance(value, list | dict) else str(value)
                for name, value in extra.items()
            }
        )
        return Call("POST", "/api/jobs", data=data, file=file)

    @staticmethod
    def _rerun(job_id: str) -> Call:
        return Call("POST", f"/api/jobs/{job_id}/rerun")

    @staticmethod
    def _list(
        state: str | Iterable[str] | None,
        kind: str | None,
        owner: str | None,
        limit: int | None,
        cursor: str | None,
        tag: str | Iterable[str] | None = None,
        parent: str | None = None,
    ) -> Call:
        params = BaseClient._filter_params(state, kind, tag)
        if parent is not None:
            params.append(("parent", parent))
        for name, value in (("owner", owner), ("limit", limit), ("cursor", cursor)):
            if value is not None:
                params.append((name, str(value)))
        return Call("GET", "/api/jobs", params)

    @staticmethod
    def _filter_params(
        state: str | Iterable[str] | None, kind: str | None, tag: str | Iterable[str] | None
    ) -> list[tuple[str, str]]:
        """The query of a job filter: any of the states, the kind, every one of the tags."""
        states = [state] if isinstance(state, str) else list(state or ())
        tags = [tag] if isinstance(tag, str) else list(tag or ())
        params = [("state", str(value)) for value in states]
        params.extend(("tag", value) for value in tags)
        if kind is not None:
            params.append(("kind", kind))
        return params

    @staticmethod
    def _batch(
        jobs: Iterable[Mapping[str, Any]],
        tags: Iterable[str] | None,
        metadata: Mapping[str, Any] | None,
        allow_failures: bool,
    ) -> Call:
        body: dict[str, Any] = {"jobs": [dict(job) for job in jobs]}
        if tags is not None:
            body["tags"] = list(tags)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if allow_failures:
            body["allow_failures"] = True
        return Call("POST", "/api/batches", json=body)

    @staticmethod
    def _input(job_id: str, name: str, value: Any) -> Call:
        return Call("POST", f"/api/jobs/{job_id}/input", json={"name": name, "value": value})

    @staticmethod
    def _share(job_id: str, subject: str, *, input: bool | None) -> Call:
        """PUT (``input`` True or False) or DELETE (``None``) a reader of a job."""
        path = f"/api/jobs/{job_id}/readers/{quote(subject, safe='')}"
        if input is None:
            return Call("DELETE", path)
        return Call("PUT", path, params=[("input", "true")] if input else [])

    @staticmethod
    def _publish(topic: str, type: str, data: Any) -> Call:
        return Call("POST", "/api/events", json={"topic": topic, "type": type, "data": data})

    @staticmethod
    def _subscribe_params(topics: str | Iterable[str]) -> list[tuple[str, str]]:
        names = [topics] if isinstance(topics, str) else list(topics)
        if not names:
            raise ValueError("subscribe to at least one topic")
        return [("topic", name) for name in names]

    @staticmethod
    def _open_file(file: FileSource) -> tuple[str, bytes | IO[bytes], IO[bytes] | None]:
        """``(filename, content, file to close afterwards)`` for a multipart upload."""
        if isinstance(file, tuple):
            return file[0], file[1], None
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            handle = path.open("rb")
            return path.name, handle, handle
        return Path(getattr(file, "name", "upload")).name, file, None

    # -- reading responses --------------------------------------------------------------------

    @staticmethod
    def _read(response: httpx.Response) -> Any:
        """The JSON body of a response that was read, or the typed error it stands for."""
        if response.status_code >= 400:
            raise status_error(response, response.content)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code} with a body that is not JSON"
            ) from None

    @staticmethod
    def _check_event_stream(response: httpx.Response) -> None:
        """Refuse a successful answer that is not an event stream (a server that is not jobcast).

        Read as a stream, it would deliver bytes but never an event, for ever.
        """
        kind = response.headers.get("content-type", "")
        if response.status_code == 204 or kind.partition(";")[0].strip() == "text/event-stream":
            return
        raise ProtocolError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} with {kind or 'no content type'}, not an event stream"
        )

    @staticmethod
    def _page(body: Any) -> JobPage:
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list):
            raise ProtocolError("the server's answer is not a page of jobs (no 'jobs' list)")
        return JobPage([Job.from_dict(job) for job in jobs], body.get("next_cursor"))

    @staticmethod
    def _published_id(body: Any) -> str:
        event_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(event_id, str) or not event_id:
            raise ProtocolError("the server's answer to a publish carries no event 'id'")
        return event_id

    @staticmethod
    def _polled(previous: Job | None, job: Job, body: dict[str, Any]) -> Event | None:
        """The event a poll stands for: the snapshot when anything changed, terminal last."""
        if job.terminal:
            return Event(job.state.value, body, None, polled=True)
        if previous is None or (previous.seq, previous.state) != (job.seq, job.state):
            return Event("snapshot", body, None, polled=True)
        return None


# -- arguments checked before anything is sent --------------------------------------------------


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; else ``ValueError`` saying why.

    httpx would only complain at the first request, and in its own words (``InvalidURL``).
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a valid URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http:// or https:// URL: {url!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"not a valid URL: {url!r} (port {parsed.port} is out of range)")
    return url


def check_token(token: str) -> str:
    """``token`` if it can go in an ``Authorization`` header; else ``ValueError``.

    A header takes printable ASCII; anything else would fail deep in the transport, or be
    reported as a server that cannot be reached.
    """
    if not all("!" <= char <= "~" for char in token):
        raise ValueError("a token is printable ASCII without spaces or line breaks")
    return token


# -- deadlines (watch(timeout=...), wait()) ------------------------------------------------------


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def until(deadline: float | None, seconds: float) -> float:
    """``seconds``, shortened so that a read or a sleep cannot overrun ``deadline``."""
    if deadline is None:
        return seconds
    return max(0.001, min(seconds, deadline - time.monotonic()))


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout("the job did not finish in time")
