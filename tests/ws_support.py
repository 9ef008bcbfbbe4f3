"""A WebSocket client for the tests: every receive has a timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed


async def receive(ws: ClientConnection, timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        return orjson.loads(await ws.recv())


async def receive_op(ws: ClientConnection, timeout: float = 5.0) -> Any:
    """The next message that is not a ping (an idle socket is pinged, as any client sees)."""
    async with asyncio.timeout(timeout):
        while True:
            message = orjson.loads(await ws.recv())
            if message.get("op") != "ping":
                return message


async def receive_until_closed(ws: ClientConnection, timeout: float = 10.0) -> list[Any]:
    """Every message until the server closes the socket."""
    messages = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                messages.append(orjson.loads(await ws.recv()))
            except ConnectionClosed:
                return messages


async def send(ws: ClientConnection, value: Any) -> None:
    await ws.send(orjson.dumps(value).decode())


def close_code(ws: ClientConnection) -> int | None:
    return ws.close_code
