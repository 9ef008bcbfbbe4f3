"""``POST /api/events`` for the fast entrance (``fast_paths.py``).

An HTTP publish through FastAPI spent more on routing, dependency solving, model validation
and response serialisation than on publishing. This parses the body with orjson and checks its
shape directly, then calls the same ``publish_events`` as the FastAPI route. It answers only
the plain case, a JSON object or list of objects with string ``topic`` and ``type`` and any
``data``: any other body (malformed JSON, a wrong field, an empty list, a body over the limit,
a number orjson cannot read exactly) goes to the FastAPI route, replayed as it arrived, so that
every error keeps its one definition and wording. Whatever else goes wrong here is answered as
the framework would: a JSON 500, logged, since under ``jobcast serve`` nothing outside this
would catch it (fast_paths.F3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from jobcast.errors import JobcastError
from jobcast.jobs.idempotency import REPLAYED_HEADER
from jobcast.server.http.errors import jobcast_error_response, unexpected_error_response
from jobcast.server.http.exact_json import long_digits
from jobcast.server.routes.events import PublishRequest, publish_events

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime

#: The headers of a publish answered again for its idempotency key.
REPLAYED = {REPLAYED_HEADER: "true"}
#: The body's fields, as the route's model declares them (one declaration for both entrances).
FIELDS = frozenset(PublishRequest.model_fields)


def declared_json_body(scope: Scope, limit: int) -> bool:
    """Whether the request declares a JSON body of at most ``limit`` bytes (else it is not
    ours to take: no length, too long, or not JSON)."""
    length_ok = json = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            # bytes.isdigit is ASCII-only; the length check spares int() thousands of digits.
            length_ok = len(value) <= 19 and value.isdigit() and int(value) <= limit
        elif name == b"content-type":
            json = value.partition(b";")[0].strip().lower() == b"application/json"
    return length_ok and json


def declared_body(scope: Scope, limit: int) -> bool:
    """Whether the request declares a body of at most ``limit`` bytes (any type)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return len(value) <= 19 and value.isdigit() and int(value) <= limit
    return False


def plain_items(body: bytes) -> tuple[list[tuple[str, str, Any]], bool] | None:
    """The events of a body in the plain shape, and whether it was a list; else ``None``."""
    if long_digits(body):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    batch = isinstance(parsed, list)
    items = []
    for item in parsed if batch else [parsed]:
        if not isinstance(item, dict) or not item.keys() <= FIELDS:
            return None
        topic, event_type = item.get("topic"), item.get("type")
        if not isinstance(topic, str) or not isinstance(event_type, str):
            return None
        items.append((topic, event_type, item.get("data")))
    return (items, batch) if items else None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the real messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Message:
        return pending.pop() if pending else await receive()

    return receive_again


async def publish_plain(jc: Runtime, scope: Scope, body: bytes) -> Response | None:
    """The response to a plain publish, or ``None`` when the FastAPI route must answer."""
    plain = plain_items(body)
    if plain is None:
        return None
    items, batch = plain
    connection = HTTPConnection(scope)
    try:
        principal = await jc.credentials.resolve(connection)
        ids, replayed = await publish_events(jc, connection, principal, items, batch=batch)
    except JobcastError as exc:
        return jobcast_error_response(exc, scope)
    except Exception:
        return unexpected_error_response(scope["method"], scope["path"])
    content = orjson.dumps({"ids": ids} if batch else {"id": ids[0]})
    if replayed:  # idempotency.I5: as the FastAPI route answers it
        return Response(content, 200, REPLAYED, media_type="application/json")
    return Response(content, 202, media_type="application/json")
