"""WebSocket connections for ``read_stream(..., transport="ws")``, and the seam where the
``websockets`` library's errors are translated.

Loaded only when a read asks for the WebSocket transport: the base install is httpx alone,
and ``websockets`` comes with the ``ws`` extra (``pip install 'jobcast[ws]'``; the ``server``
extra brings it too, through uvicorn). Decisions (cited as W1..W3):

W1. The token goes in the ``Authorization`` header of the handshake, never in the URL, as
    with every other request of the client; the client's extra ``headers`` go along.
W2. The twins use the library's own clients (its asyncio one in ``AsyncClient``, which
    therefore needs asyncio for this transport, its threaded one in ``Client``).
W3. A message is at most ``MAX_MESSAGE`` bytes: one data message carries everything pending
    (``durable_socket.S2``), bounded by what a stream holds (``JOBCAST_MAX_STREAM_BYTES``,
    64 MiB by default) in its encoding (base64 adds a third, JSON escapes more).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from jobcast.client._errors import ConnectionFailed, ProtocolError, typed_error

try:
    from websockets import exceptions as ws_errors
    from websockets.asyncio.client import connect as connect_async
    from websockets.sync.client import connect as connect_sync
except ImportError as exc:  # the base install: say which extra brings it
    raise ImportError(
        "read_stream(transport='ws') needs the 'websockets' package, which is not installed: "
        "pip install 'jobcast[ws]'",
        name="websockets",
    ) from exc

__all__ = ["Closed", "connect_async", "connect_options", "connect_sync", "socket_url", "translated"]

#: W3: 256 MiB.
MAX_MESSAGE = 256 * 1024 * 1024


def socket_url(base_url: str, target: str) -> str:
    """``target`` (a path and query) below ``base_url`` (an http(s) URL, checked, without a
    trailing slash), as a ``ws://`` or ``wss://`` URL: the mount path is kept."""
    return "ws" + base_url.removeprefix("http") + target  # http://h/p -> ws://h/p, https -> wss


def connect_options(headers: dict[str, str], open_timeout: float) -> dict[str, Any]:
    """What both library clients are given (W1, W3)."""
    return {
        "additional_headers": headers,
        "open_timeout": open_timeout,
        "close_timeout": open_timeout,
        "max_size": MAX_MESSAGE,
    }


class Closed:
    """How a socket ended: the close code it received, if any (set by :func:`translated`)."""

    def __init__(self) -> None:
        self.code: int | None = None


@contextlib.contextmanager
def translated(url: str) -> Iterator[Closed]:
    """The seam: a closed socket gives its code; the library's other errors become
    :class:`ConnectionFailed`, a refused handshake the typed error of its status."""
    closed = Closed()
    try:
        yield closed
    except ws_errors.ConnectionClosed as exc:
        closed.code = exc.rcvd.code if exc.rcvd is not None else None
    except ws_errors.InvalidStatus as exc:
        response = exc.response
        body = response.body or b""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        fields = payload if isinstance(payload, dict) else {}
        raise typed_error(
            response.status_code,
            str(fields.get("error") or response.reason_phrase or "http_error"),
            str(fields.get("message") or f"the handshake was refused ({url})"),
            payload,
        ) from exc
    except ws_errors.InvalidURI as exc:
        raise ProtocolError(f"not a WebSocket URL: {url}") from exc
    except (ws_errors.WebSocketException, OSError, TimeoutError) as exc:
        # OSError: refused, reset, DNS; TimeoutError: the handshake or a read took too long.
        raise ConnectionFailed(f"cannot read {url}: {exc or type(exc).__name__}") from exc
