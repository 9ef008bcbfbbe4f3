"""Who may do what on ``/v1/stream/{path}``, and the protocol's request headers, parsed once.

Access (decisions D1..D3):

D1. A path under one of ``public_stream_prefixes`` needs no credential, for reads and writes
    alike (a test setup, or an application's open streams); nothing else is public, whatever
    the other settings say.
D2. Writing (create, append, close, delete) needs a publish grant on the path, exactly as
    publishing an event on a topic of that name (``policy.check_publish``): ``service`` and
    ``admin`` roles, or a token whose ``topics`` cover it. Cookie sessions must carry the CSRF
    header (``credentials.py`` checks it for every state-changing request).
D3. Reading ``jobs/{id}/...`` needs the right to watch job ``id`` (``policy.check_job``: its
    owner, its readers, privileged roles, a ticket for ``jobs/{id}``); reading any other stream
    needs a valid credential, as subscribing to a topic does (a ticket must cover the path).
"""

from __future__ import annotations

import datetime
import re
import time
from typing import TYPE_CHECKING

from starlette.requests import Request

from jobcast.auth import Principal
from jobcast.errors import Forbidden, NotFound, Unauthorized
from jobcast.outputs.model import Producer, bad_request, not_found
from jobcast.topics import TopicPattern

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

MAX_PATH = 1024
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_INTEGER = re.compile(r"[0-9]+")
#: Producer epochs and seqs stay within what JavaScript numbers hold exactly.
MAX_SAFE_INTEGER = 2**53 - 1


def stream_path(raw: str) -> str:
    """The stream's path from the URL, checked (404 for the protocol's reserved ``__ds``)."""
    segments = raw.split("/")
    if not raw or len(raw) > MAX_PATH or any(s in ("", ".", "..") for s in segments):
        raise bad_request("a stream path is non-empty segments separated by '/'")
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        raise bad_request("a stream path has no control characters")
    if segments[0] == "__ds":
        raise not_found(raw)  # subscriptions (protocol section 6) are not served here
    return raw


def is_public(jc: Runtime, path: str) -> bool:
    return path.startswith(tuple(jc.settings.public_stream_prefixes))


def check_write(jc: Runtime, principal: Principal | None, path: str) -> None:
    if not is_public(jc, path):  # D1
        jc.policy.check_publish(principal, path)  # D2


async def check_read(jc: Runtime, principal: Principal | None, path: str) -> None:
    if is_public(jc, path):  # D1
        return
    if path.startswith("jobs/"):  # D3
        job_id = path.split("/", 2)[1]
        job = await jc.runner.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        jc.policy.check_job(principal, job, "read")
        return
    if principal is None:
        raise Unauthorized("reading this stream needs a token", reason="missing_token")
    scope = principal.ticket_topics
    if scope is not None and not any(TopicPattern.parse(t).matches(path) for t in scope):
        raise Forbidden("the ticket does not cover this stream")


def ttl_header(request: Request) -> tuple[int | None, float | None]:
    """``Stream-TTL`` (seconds) and ``Stream-Expires-At`` (a Unix time); both is a 400."""
    ttl_text = request.headers.get("stream-ttl")
    expires_text = request.headers.get("stream-expires-at")
    if ttl_text is not None and expires_text is not None:
        raise bad_request("send Stream-TTL or Stream-Expires-At, not both")
    ttl = None
    if ttl_text is not None:
        if not _DECIMAL.fullmatch(ttl_text) or len(ttl_text) > 12:
            raise bad_request("Stream-TTL is a whole number of seconds, e.g. 3600")
        ttl = int(ttl_text)
    expires_at = None
    if expires_text is not None:
        try:
            moment = datetime.datetime.fromisoformat(expires_text)
        except ValueError:
            raise bad_request("Stream-Expires-At is an RFC 3339 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        expires_at = moment.timestamp()
        if expires_at <= time.time():
            raise bad_request("Stream-Expires-At is in the past")
    return ttl, expires_at


def closed_header(request: Request) -> bool:
    """``Stream-Closed: true`` (any case); every other value counts as absent."""
    return request.headers.get("stream-closed", "").lower() == "true"


def producer_headers(request: Request) -> Producer | None:
    """``Producer-Id``, ``-Epoch`` and ``-Seq``: all three or none (protocol 5.2.1)."""
    headers = request.headers
    values = [headers.get(n) for n in ("producer-id", "producer-epoch", "producer-seq")]
    if all(value is None for value in values):
        return None
    producer_id, epoch, seq = values
    if producer_id is None or epoch is None or seq is None:
        raise bad_request("send Producer-Id, Producer-Epoch and Producer-Seq together")
    if not producer_id:
        raise bad_request("Producer-Id must not be empty")
    numbers = []
    for name, text in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not _INTEGER.fullmatch(text) or len(text) > 16 or int(text) > MAX_SAFE_INTEGER:
            raise bad_request(f"{name} is a non-negative integer")
        numbers.append(int(text))
    return Producer(producer_id, numbers[0], numbers[1])


def expires_text(expires_at: float) -> str:
    moment = datetime.datetime.fromtimestamp(expires_at, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")
