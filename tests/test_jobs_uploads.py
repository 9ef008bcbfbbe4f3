"""Job submissions with files: limits enforced while streaming, and nothing left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from jobcast.server.app import create_app
from jobcast.server.http import uploads
from jobcast.server.http.uploads import display_filename
from tests.support import LiveServer, make_settings

BOUNDARY = "jobcast-test-boundary"


def leftovers(server: LiveServer) -> list[Path]:
    uploads = server.jc.settings.data_dir / "uploads"
    return sorted(uploads.iterdir()) if uploads.exists() else []


async def multipart_stream(size: int, chunk: bytes, kind: str = "ingest") -> AsyncIterator[bytes]:
    """A multipart body with a ``size``-byte file, generated as it is sent (never in memory)."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = 0
    while sent < size:
        piece = chunk if size - sent >= len(chunk) else chunk[: size - sent]
        sent += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def post_stream(
    client: httpx.AsyncClient, server: LiveServer, body: AsyncIterator[bytes]
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/jobs",
        content=body,
        headers={
            **server.auth(),
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )


async def test_a_2gb_limit_is_enforced_while_streaming(
    make_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The body is generated as it is sent, and what the server would write is counted instead
    # of stored, so the test needs no 2 GiB of disk (the small-limit tests below write for real).
    stored = 0

    def count(file: BinaryIO, hasher: Any, data: bytes) -> None:
        nonlocal stored
        hasher.update(data)
        stored += len(data)

    monkeypatch.setattr(uploads, "_absorb", count)
    limit = 2 * 1024**3
    server = make_server(max_upload_bytes=limit)
    chunk = bytes(1024 * 1024)
    async with httpx.AsyncClient(timeout=120) as client:
        response = await post_stream(client, server, multipart_stream(limit + len(chunk), chunk))
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert limit - 2 * len(chunk) < stored <= limit  # it read up to the limit, and no further
    assert leftovers(server) == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_upload_bytes=1000)
    response = await client.post(
        f"{server.url}/api/jobs",
        data={"kind": "ingest"},
        files={"file": ("a.bin", bytes(200_000), "application/octet-stream")},
        headers=server.auth(),
    )
    assert response.status_code == 413
    assert leftovers(server) == []


async def test_a_chunked_body_over_a_small_limit_is_413(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_upload_bytes=100_000)
    response = await post_stream(client, server, multipart_stream(300_000, bytes(16_384)))
    assert response.status_code == 413
    assert leftovers(server) == []


@pytest.mark.parametrize(
    ("fields", "content_type", "fragment"),
    [
        ({"kind": "nope"}, "text/plain", "unknown job kind"),
        ({"kind": "ingest", "params": "{not json"}, "text/plain", "not valid JSON"),
        ({"kind": "ingest", "params": '{"x": 1}'}, "text/plain", "invalid params"),
        ({"kind": "ingest"}, "image/png", "not accepted"),
    ],
)
async def test_refused_uploads_leave_nothing_behind(
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    fields: dict[str, str],
    content_type: str,
    fragment: str,
) -> None:
    server = make_server(upload_content_types=["text/plain", "text/csv"])
    response = await client.post(
        f"{server.url}/api/jobs",
        data=fields,
        files={"file": ("a.txt", b"hello", content_type)},
        headers=server.auth(),
    )
    assert response.status_code == 422
    assert fragment in response.json()["message"]
    assert leftovers(server) == []


async def test_a_json_body_over_the_body_limit_is_413(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_body_bytes=1000)
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"pad": "x" * 5000}},
        headers=server.auth(),
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\a.txt", "a.txt"),
        ("a\x00b\r\nc.txt", "abc.txt"),
        ("", "upload"),
        ("..", ".."),
        ("x" * 300, "x" * 255),
    ],
)
def test_display_filenames_are_never_paths(raw: str, shown: str) -> None:
    assert display_filename(raw) == shown


@pytest.mark.parametrize("declared", [b"\xb2", b"\xef\xbc\x91", b"9" * 5000])
async def test_a_declared_length_that_is_no_number_is_not_a_500(
    tmp_path: Path, declared: bytes
) -> None:
    # Regression: str.isdigit() is true of "²", and int() refuses it. uvicorn's parser refuses
    # such a header itself, so this goes through an in-process ASGI call, as other servers may.
    app = create_app(make_settings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        token = app.state.jobcast.tokens.mint("alice", role="user")
        body = (
            b'--b\r\nContent-Disposition: form-data; name="kind"\r\n\r\ningest\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
        )
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": declared,
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://jobcast") as client:
            response = await client.post("/api/jobs", content=body, headers=headers)  # type: ignore[arg-type]
    assert response.status_code in (202, 413), response.text


async def test_a_json_body_declaring_thousands_of_digits_is_413(tmp_path: Path) -> None:
    # Regression: int() refuses more than 4300 digits, so the body limit answered 500.
    app = create_app(make_settings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        token = app.state.jobcast.tokens.mint("w", role="service")
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Length": "9" * 5000,
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://jobcast") as client:
            response = await client.post("/api/events", content=b"{}", headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"
