"""The work-item inbox example: intake, the live stream and the list against a real server;
the dashboard in a browser is in ``test_browsers.py``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from examples.workitems.app import create_app, settings_from_env
from jobcast.wire import ServerSentEvent
from tests.examples.conftest import Serve
from tests.support import SECRET, EventStream, LiveServer

FIELDS = {
    "id",
    "submission_id",
    "submission_ref",
    "subject",
    "from_email",
    "created_at",
    "status",
    "extracted_fields",
}
EMAIL = {
    "from": "broker@example.com",
    "subject": "New submission SUB-2025-000123: Acme Ltd",
    "body": "Hello,\n\nInsured: Acme Ltd\nPolicy number: PL-778812\nEffective date: 2025-12-01\n"
    "Premium: USD 12,500\n\nThanks",
}


def starter(serve: Serve, data_dir: Path) -> Callable[..., LiveServer]:
    def start(**settings: Any) -> LiveServer:
        values: dict[str, Any] = {"heartbeat_interval": 0.2}
        values.update(settings)
        app = create_app(
            settings_from_env(data_dir=data_dir, jwt_secret=SECRET, _env_file=None, **values)
        )
        return serve(app)

    return start


@pytest.fixture
def start(serve: Serve, tmp_path: Path) -> Callable[..., LiveServer]:
    return starter(serve, tmp_path)


@pytest.fixture(scope="module")
def server(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    return starter(serve_shared, tmp_path_factory.mktemp("workitems"))()


def data(event: ServerSentEvent) -> Any:
    assert event.data is not None
    return orjson.loads(event.data)


async def intake(
    client: httpx.AsyncClient, server: LiveServer, email: dict[str, Any] = EMAIL
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/email/intake",
        json=email,
        headers=server.auth("mail-gateway", role="service"),
    )


async def next_message(stream: EventStream) -> Any:
    """The next message that is not a heartbeat."""
    while True:
        event = await stream.next()
        assert event.event == "message"  # unnamed: the dashboard's onmessage gets them all
        if data(event)["event"] != "heartbeat":
            return event


async def test_the_stream_says_connected_then_sends_work_items_live(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with EventStream(client, f"{server.url}/sse/workitems") as stream:
        connected = await stream.next()
        assert connected.event == "message" and connected.id is None
        body = data(connected)
        assert set(body) == {"event", "connection_id"} and body["event"] == "connected"
        assert re.fullmatch(r"[0-9a-f-]{36}", body["connection_id"])
        response = await intake(client, server)
        assert response.status_code == 200
        answer = response.json()
        assert set(answer) == {"status", "workitem_id"} and answer["status"] == "success"
        event = await next_message(stream)
    assert event.id  # resumable
    message = data(event)
    assert set(message) == {"event", "data"} and message["event"] == "new_workitem"
    item = message["data"]
    assert set(item) == FIELDS and item["id"] == answer["workitem_id"]
    assert item["submission_ref"] == "SUB-2025-000123" and item["status"] == "new"
    assert item["from_email"] == "broker@example.com" and item["subject"] == EMAIL["subject"]
    assert item["extracted_fields"] == {
        "insured": "Acme Ltd",
        "policy_number": "PL-778812",
        "effective_date": "2025-12-01",
        "premium": "USD 12,500",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["created_at"])
    listed = (await client.get(f"{server.url}/api/workitems")).json()["workitems"]
    assert listed[0] == item


async def test_each_connection_has_its_own_id_and_idle_streams_get_heartbeats(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/sse/workitems"
    async with EventStream(client, url) as first, EventStream(client, url) as second:
        one, two = data(await first.next()), data(await second.next())
        beat = data(await first.next())
    assert one["connection_id"] != two["connection_id"]
    assert set(beat) == {"event", "timestamp"} and beat["event"] == "heartbeat"
    assert isinstance(beat["timestamp"], float)


async def test_only_the_mail_gateway_may_post(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/email/intake"
    assert (await client.post(url, json=EMAIL)).status_code == 401
    assert (await client.post(url, json=EMAIL, headers=server.auth())).status_code == 403
    granted = server.auth("gateway-2", grants=["workitems"])
    assert (await client.post(url, json=EMAIL, headers=granted)).status_code == 200
    bad = {**EMAIL, "from": "not an address"}
    assert (await intake(client, server, bad)).status_code == 422


async def test_a_redelivered_email_is_one_work_item(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    email = {
        "from_email": "ops@example.com",
        "subject": "Claim update",
        "body": "Claim: 4411",
        "message_id": "<abc@mail.example.com>",
    }
    first = (await intake(client, server, email)).json()
    again = (await intake(client, server, email)).json()
    assert first == again
    listed = (await client.get(f"{server.url}/api/workitems")).json()["workitems"]
    assert [item["id"] for item in listed].count(first["workitem_id"]) == 1
    item = next(item for item in listed if item["id"] == first["workitem_id"])
    assert re.fullmatch(r"SUB-\d{4}-[0-9A-F]{6}", item["submission_ref"])  # none in the mail


async def test_a_cut_stream_resumes_without_missing_a_work_item(
    start: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    # Hosts that end long responses (a serverless platform's 300 s): the stream ends cleanly
    # before the limit, and the client resumes after the last work item it saw.
    server = start(max_stream_seconds=1.0)
    url = f"{server.url}/sse/workitems"
    async with EventStream(client, url) as stream:
        await stream.next()  # connected
        await intake(client, server, {**EMAIL, "subject": "before the cut"})
        seen = await next_message(stream)
        rest = await stream.until_end(timeout=5)
    assert all(data(e)["event"] == "heartbeat" for e in rest)
    await intake(client, server, {**EMAIL, "subject": "during the gap"})
    async with EventStream(client, url, headers={"Last-Event-ID": seen.id or ""}) as resumed:
        assert data(await resumed.next())["event"] == "connected"
        missed = await next_message(resumed)
    assert data(missed)["data"]["subject"] == "during the gap"


async def test_a_private_inbox_needs_a_token(
    start: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKITEMS_PUBLIC", "false")
    server = start()
    assert (await client.get(f"{server.url}/sse/workitems")).status_code == 401
    assert (await client.get(f"{server.url}/api/workitems")).status_code == 401
    async with EventStream(client, f"{server.url}/sse/workitems", headers=server.auth()) as stream:
        assert data(await stream.next())["event"] == "connected"


async def test_the_dashboard_and_the_client_module_are_served(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    page = await client.get(f"{server.url}/")
    assert page.status_code == 200 and "/app/dashboard.js" in page.text
    assert (await client.get(f"{server.url}/app/dashboard.js")).status_code == 200
    assert (await client.get(f"{server.url}/static/jobcast.js")).status_code == 200
