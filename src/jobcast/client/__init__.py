"""The jobcast Python client: ``Client`` (blocking) and ``AsyncClient``, twins over one base.

::

    from jobcast.client import Client

    with Client("http://127.0.0.1:8000", token=token) as client:
        job = client.submit("demo", {"steps": 5, "delay": 0.2})
        for item in client.watch(job.id):
            print(item)
        print(client.wait(job.id, timeout=60).result)

Streams (``watch``, ``subscribe``) reconnect by themselves with ``Last-Event-ID`` and drop
duplicates; they yield :class:`Event` items and the in-band notices :class:`Reset` and
:class:`Reauth` (see ``_models``). ``ReconnectPolicy`` holds every knob; with
``max_first_attempts`` a stream that never connected gives up instead of retrying. A URL or
token that is malformed raises ``ValueError`` before anything is sent; an answer that is not
jobcast's raises ``ProtocolError``. The client never imports the server.
"""

from __future__ import annotations

from jobcast.client._async import AsyncClient, AsyncOutputRead
from jobcast.client._base import FileSource, TokenSource
from jobcast.client._errors import (
    AuthError,
    BadRequest,
    ClientError,
    ConflictError,
    ConnectionFailed,
    ForbiddenError,
    HTTPStatusError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerUnavailable,
    WaitTimeout,
)
from jobcast.client._models import Event, Job, JobPage, Reauth, Reset, StreamItem
from jobcast.client._policy import ReconnectPolicy
from jobcast.client._sync import Client, OutputRead
from jobcast.jobs.model import JobState

__all__ = [
    "AsyncClient",
    "AsyncOutputRead",
    "AuthError",
    "BadRequest",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectionFailed",
    "Event",
    "FileSource",
    "ForbiddenError",
    "HTTPStatusError",
    "Job",
    "JobPage",
    "JobState",
    "NotFoundError",
    "OutputRead",
    "ProtocolError",
    "RateLimitedError",
    "Reauth",
    "ReconnectPolicy",
    "Reset",
    "ServerUnavailable",
    "StreamItem",
    "TokenSource",
    "WaitTimeout",
]
