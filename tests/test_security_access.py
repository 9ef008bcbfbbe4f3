"""Stream tickets, cookie sessions with CSRF, CORS, WebSocket origins, rate limits, stream caps,
credential expiry and log redaction, against a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
import websockets

from jobcast.server.ops.logs import RedactSecrets, install_log_redaction
from tests.support import EventStream, LiveServer, wait_until
from tests.ws_support import receive_until_closed

LiveServerFactory = Callable[..., LiveServer]


async def ticket_for(server: LiveServer, client: httpx.AsyncClient, *topics: str) -> str:
    response = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": list(topics)}, headers=server.auth()
    )
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 60
    return str(response.json()["ticket"])


async def test_a_ticket_opens_one_stream_once(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    ticket = await ticket_for(server, client, "videos/*")
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "videos/1", "ticket": ticket}) as events:
        assert events.response is not None and events.response.status_code == 200
        await client.post(
            url,
            json={"topic": "videos/1", "type": "t", "data": 1},
            headers=server.auth("w", "service"),
        )
        assert (await events.next()).data == "1"
    again = await client.get(url, params={"topic": "videos/1", "ticket": ticket})
    assert (again.status_code, again.json()["reason"]) == (401, "ticket_used")


async def test_a_ticket_is_bound_to_its_topics_and_to_streams(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/events"
    ticket = await ticket_for(server, client, "videos/1")
    outside = await client.get(url, params={"topic": "videos/2", "ticket": ticket})
    assert outside.status_code == 403
    ticket = await ticket_for(server, client, "videos/1")
    as_bearer = await client.get(
        url, params={"topic": "videos/1"}, headers={"Authorization": f"Bearer {ticket}"}
    )
    assert (as_bearer.status_code, as_bearer.json()["reason"]) == (401, "wrong_credential_type")
    ticket = await ticket_for(server, client, "videos/1")
    publish = await client.post(f"{url}?ticket={ticket}", json={"topic": "videos/1", "type": "t"})
    assert publish.status_code == 403
    ticket = await ticket_for(server, client, "videos/1")
    jobs = await client.get(f"{server.url}/api/jobs", params={"ticket": ticket})
    assert jobs.status_code == 403


async def test_a_ticket_opens_its_jobs_stream(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    submitted = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 2, "delay": 0}},
        headers=server.auth(),
    )
    job_id = submitted.json()["id"]
    ticket = await ticket_for(server, client, f"jobs/{job_id}")
    async with EventStream(
        client, f"{server.url}/api/jobs/{job_id}/events", params={"ticket": ticket}
    ) as events:
        assert (await events.until_end())[-1].event == "succeeded"
    someone_else = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["jobs/*"]}, headers=server.auth("mallory")
    )
    ticket = someone_else.json()["ticket"]
    denied = await client.get(f"{server.url}/api/jobs/{job_id}/events", params={"ticket": ticket})
    assert denied.status_code == 404


async def test_cookie_session_needs_csrf_proof_for_changes(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(cors_origins="http://localhost:5173")
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth())
    assert login.status_code == 200
    set_cookie = " ".join(login.headers.get_list("set-cookie"))
    assert (
        "jobcast_session=" in set_cookie
        and "HttpOnly" in set_cookie
        and "SameSite=lax" in set_cookie
    )
    csrf = login.json()["csrf_token"]
    assert login.headers["x-csrf-token"] == csrf
    cookies = {"jobcast_session": login.cookies["jobcast_session"], "jobcast_csrf": csrf}
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        assert (await browser.get(f"{server.url}/api/jobs")).status_code == 200  # reads are safe
        body = {"kind": "demo", "params": {"steps": 1, "delay": 0}}
        missing = await browser.post(f"{server.url}/api/jobs", json=body)
        assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["message"]
        wrong = await browser.post(
            f"{server.url}/api/jobs", json=body, headers={"X-CSRF-Token": "nope"}
        )
        assert wrong.status_code == 403
        evil = await browser.post(
            f"{server.url}/api/jobs",
            json=body,
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
        )
        assert evil.status_code == 403 and "Origin" in evil.json()["message"]
        good = await browser.post(
            f"{server.url}/api/jobs",
            json=body,
            headers={"X-CSRF-Token": csrf, "Origin": "http://localhost:5173"},
        )
        assert good.status_code == 202 and good.json()["owner"] == "alice"
        async with EventStream(
            browser, f"{server.url}/api/events", params={"topic": "news"}
        ) as events:
            assert events.response is not None and events.response.status_code == 200
    # a bearer request needs no CSRF token: browsers never attach bearer tokens by themselves
    bearer = await client.post(f"{server.url}/api/jobs", json=body, headers=server.auth())
    assert bearer.status_code == 202


async def test_cors_allows_configured_origins_only(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(cors_origins="dev")
    preflight = await client.options(
        f"{server.url}/api/jobs",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-csrf-token",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    other = await client.get(f"{server.url}/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/jobs/j1/readers/bob"),
        ("DELETE", "/api/jobs/j1/readers/bob"),
        ("POST", "/api/jobs/j1/cancel"),
        ("POST", "/api/jobs/j1/rerun"),
        ("DELETE", "/api/jobs/j1"),
    ],
)
async def test_cors_preflight_allows_every_method_the_api_uses(
    make_server: LiveServerFactory, client: httpx.AsyncClient, method: str, path: str
) -> None:
    server = make_server(cors_origins="http://localhost:5173")
    preflight = await client.options(
        f"{server.url}{path}",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert method in preflight.headers["access-control-allow-methods"].split(", ")


async def test_csrf_exempt_paths_need_no_token(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(csrf_exempt_paths="/api/events")
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth("w", "service"))
    cookies = {"jobcast_session": login.cookies["jobcast_session"]}  # and no CSRF proof
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        body = {"topic": "a", "type": "t"}
        assert (await browser.post(f"{server.url}/api/events", json=body)).status_code == 202
        refused = await browser.post(f"{server.url}/api/jobs", json={"kind": "demo"})
        assert refused.status_code == 403  # every other path still needs it


async def test_wildcard_cors_never_allows_credentials(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(cors_origins="*")
    response = await client.get(f"{server.url}/health", headers={"Origin": "https://any.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


async def test_websocket_handshakes_check_origin(make_server: LiveServerFactory) -> None:
    server = make_server(cors_origins="http://localhost:5173")
    url = f"ws://{server.host}:{server.port}/ws/events?token={server.token()}"
    async with asyncio.timeout(5):
        async with websockets.connect(url, origin="http://localhost:5173") as ws:  # type: ignore[arg-type]
            await ws.send('{"op": "subscribe", "topics": ["a"]}')
            assert "subscribed" in str(await ws.recv())
        with pytest.raises(websockets.exceptions.WebSocketException):
            async with websockets.connect(url, origin="https://evil.example") as ws:  # type: ignore[arg-type]
                await ws.recv()


async def test_publishing_is_rate_limited_with_retry_after(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(rate_limit_publish="3/minute")
    headers = server.auth("w", grants=["a"])  # a user allowed to publish on "a"
    body = {"topic": "a", "type": "t"}
    codes = [
        (await client.post(f"{server.url}/api/events", json=body, headers=headers)).status_code
        for _ in range(4)
    ]
    assert codes == [202, 202, 202, 429]
    limited = await client.post(f"{server.url}/api/events", json=body, headers=headers)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"] == "rate_limited"


async def test_services_and_admins_are_not_rate_limited(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(rate_limit_publish="2/minute", rate_limit_submit="2/minute")
    for role in ("service", "admin"):
        headers = server.auth(f"backend-{role}", role)
        published = [
            await client.post(
                f"{server.url}/api/events", json={"topic": "a", "type": "t"}, headers=headers
            )
            for _ in range(5)
        ]
        assert [r.status_code for r in published] == [202] * 5
        submitted = [
            await client.post(f"{server.url}/api/jobs", json={"kind": "demo"}, headers=headers)
            for _ in range(5)
        ]
        assert [r.status_code for r in submitted] == [202] * 5


@pytest.mark.parametrize(
    ("setting", "path", "body", "ok"),
    [
        ("rate_limit_submit", "/api/jobs", {"kind": "demo"}, 202),
        ("rate_limit_ticket", "/api/auth/ticket", {"topics": ["a"]}, 200),
        ("rate_limit_ticket", "/api/auth/session", None, 200),
    ],
    ids=["submit", "ticket", "session"],
)
async def test_submission_and_ticket_issue_are_rate_limited(
    make_server: LiveServerFactory,
    client: httpx.AsyncClient,
    setting: str,
    path: str,
    body: object,
    ok: int,
) -> None:
    server = make_server(**{setting: "2/minute"})
    codes = []
    for _ in range(3):
        response = await client.post(f"{server.url}{path}", json=body, headers=server.auth())
        codes.append(response.status_code)
    assert codes == [ok, ok, 429]
    assert int(response.headers["retry-after"]) >= 1


async def test_the_total_stream_cap_is_503(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(max_streams_total=2)
    url = f"{server.url}/api/events"
    first = EventStream(client, url, params={"topic": "a"}, headers=server.auth())
    second = EventStream(client, url, params={"topic": "a"}, headers=server.auth("bob"))
    async with first, second:
        third = await client.get(url, params={"topic": "a"}, headers=server.auth("carol"))
        assert third.status_code == 503 and "stream limit" in third.json()["message"]
    # The server frees a stream's place when it sees the connection close, not before.
    await wait_until(lambda: server.jc.hub.subscriber_count == 0)
    async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()) as again:
        assert again.response is not None and again.response.status_code == 200  # room again


async def test_concurrent_streams_per_subject_are_capped(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(max_streams_per_subject=2)
    url = f"{server.url}/api/events"
    first = EventStream(client, url, params={"topic": "a"}, headers=server.auth())
    second = EventStream(client, url, params={"topic": "b"}, headers=server.auth())
    async with first, second:
        third = await client.get(url, params={"topic": "c"}, headers=server.auth())
        assert third.status_code == 429 and "retry-after" in third.headers
        other_user = EventStream(client, url, params={"topic": "c"}, headers=server.auth("bob"))
        async with other_user as events:
            assert events.response is not None and events.response.status_code == 200


async def test_a_stream_whose_token_expires_asks_to_reauthenticate(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(jwt_leeway_seconds=0, heartbeat_interval=0.2)
    token = server.token(ttl=1)
    async with EventStream(
        client, f"{server.url}/api/events", params={"topic": "a", "token": token}
    ) as events:
        frames = await events.until_end(timeout=5)
    assert frames[-1].event == "reauth"
    assert events.decoder.retry is not None


async def test_a_ticket_s_stream_lasts_as_long_as_the_token_not_the_ticket(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(ticket_ttl_seconds=1, jwt_leeway_seconds=0, heartbeat_interval=0.2)
    issued = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["a"]}, headers=server.auth()
    )
    ticket = issued.json()["ticket"]
    ticket_expiry = jwt.decode(ticket, options={"verify_signature": False})["exp"]
    url = f"{server.url}/api/events"
    params = {"topic": "a", "ticket": ticket}
    async with EventStream(client, url, params=params, comments=True) as events:
        async with asyncio.timeout(5):  # the ticket's expiry passes while the stream is read
            while time.time() < ticket_expiry + 0.5:
                assert (await events.next()).event != "reauth"
        await client.post(
            url, json={"topic": "a", "type": "t", "data": 1}, headers=server.auth("w", "service")
        )
        while (event := await events.next()).data is None:  # heartbeats, as comments
            pass
        assert (event.event, event.data) == ("t", "1")


async def test_a_token_expired_within_the_leeway_opens_no_stream(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    # Verification tolerates 30 s of clock skew, but a stream opened with this token would end
    # with `reauth` at once, and a client that came back with it would loop.
    server = make_server(jwt_leeway_seconds=30)
    stale = {"Authorization": f"Bearer {server.token(ttl=-1)}"}
    submitted = await client.post(f"{server.url}/api/jobs", json={"kind": "demo"}, headers=stale)
    assert submitted.status_code == 202  # ordinary requests keep the leeway
    job_id = submitted.json()["id"]
    issued = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["a"]}, headers=stale
    )
    for path, params, headers in [
        ("/api/events", {"topic": "a"}, stale),
        (f"/api/jobs/{job_id}/events", {}, stale),
        ("/api/events", {"topic": "a", "ticket": issued.json()["ticket"]}, {}),
    ]:
        response = await client.get(f"{server.url}{path}", params=params, headers=headers)
        assert (response.status_code, response.json()["reason"]) == (401, "token_expired"), path
    url = f"ws://{server.host}:{server.port}/ws/jobs/{job_id}?token={server.token(ttl=-1)}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        await receive_until_closed(ws)
    assert ws.close_code == 4401
    # the general socket: its subscribe is refused and the socket closed, so the client renews
    url = f"ws://{server.host}:{server.port}/ws/events?token={server.token(ttl=-1)}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        await ws.send('{"op": "subscribe", "topics": ["a"]}')
        await receive_until_closed(ws)
    assert (ws.close_code, ws.close_reason) == (4401, "token_expired")


async def wait_past(epoch_seconds: float) -> None:
    """Let the wall clock pass an expiry: the subject of the test, not a synchronisation."""
    await asyncio.sleep(max(0.0, epoch_seconds - time.time()) + 0.1)


async def test_an_expired_ticket_is_refused(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(ticket_ttl_seconds=1, jwt_leeway_seconds=0)
    issued = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["a"]}, headers=server.auth()
    )
    ticket = issued.json()["ticket"]
    await wait_past(jwt.decode(ticket, options={"verify_signature": False})["exp"])
    late = await client.get(f"{server.url}/api/events", params={"topic": "a", "ticket": ticket})
    assert (late.status_code, late.json()["reason"]) == (401, "token_expired")


async def test_a_spent_ticket_stays_spent_while_the_leeway_accepts_it(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(ticket_ttl_seconds=1, jwt_leeway_seconds=30)
    url, topic = f"{server.url}/api/events", {"topic": "a"}

    async def ticket() -> str:
        issued = await client.post(
            f"{server.url}/api/auth/ticket", json={"topics": ["a"]}, headers=server.auth()
        )
        return str(issued.json()["ticket"])

    first = await ticket()
    async with EventStream(client, url, params={**topic, "ticket": first}) as used:
        assert used.response is not None and used.response.status_code == 200
    await wait_past(jwt.decode(first, options={"verify_signature": False})["exp"])
    # another spend prunes the records of expired tickets; the first is still presentable
    async with EventStream(client, url, params={**topic, "ticket": await ticket()}) as other:
        assert other.response is not None and other.response.status_code == 200
    async with client.stream("GET", url, params={**topic, "ticket": first}) as again:
        assert again.status_code == 401  # not a stream
        assert json.loads(await again.aread())["reason"] == "ticket_used"


def test_tokens_and_tickets_are_redacted_from_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:1", "GET", "/api/events?topic=a&token=eyJsecret.x.y&ticket=abc", "1.1", 200),
        None,
    )
    RedactSecrets().filter(record)
    message = record.getMessage()
    assert "eyJsecret" not in message and "abc" not in message
    assert "token=REDACTED" in message and "ticket=REDACTED" in message and "topic=a" in message


def test_jobcast_child_loggers_are_redacted_in_text_mode(caplog: pytest.LogCaptureFixture) -> None:
    import jobcast.jobs.worker  # noqa: F401  (creates the jobcast.worker logger, as serving does)

    install_log_redaction()
    with caplog.at_level(logging.INFO, logger="jobcast.worker"):
        logging.getLogger("jobcast.worker").info("retrying GET /api/events?token=eyJa.b.c")
    assert "eyJa" not in caplog.text and "token=REDACTED" in caplog.text


async def test_a_job_socket_whose_token_expires_is_closed_with_4401(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(jwt_leeway_seconds=0, heartbeat_interval=0.2)
    submitted = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 200, "delay": 0.1}},  # outlives the token
        headers=server.auth(),
    )
    job_id = submitted.json()["id"]
    url = f"ws://{server.host}:{server.port}/ws/jobs/{job_id}?token={server.token(ttl=1)}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        messages = await receive_until_closed(ws)
    assert ws.close_code == 4401
    assert messages[0]["type"] == "snapshot" and messages[-1]["op"] == "error"


async def test_a_socket_whose_token_expires_is_closed_with_4401(
    make_server: LiveServerFactory,
) -> None:
    server = make_server(jwt_leeway_seconds=0, heartbeat_interval=0.2)
    url = f"ws://{server.host}:{server.port}/ws/events?token={server.token(ttl=1)}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        await ws.send('{"op": "subscribe", "topics": ["a"]}')
        messages = await receive_until_closed(ws)
    assert ws.close_code == 4401
    assert messages[-1]["op"] == "error"


async def test_a_socket_that_subscribes_after_its_token_expired_is_told_why(
    make_server: LiveServerFactory,
) -> None:
    # Regression: a socket whose token ran out while it held no subscription was closed 4401
    # on its next subscribe without the error message every other close sends first.
    server = make_server(jwt_leeway_seconds=0, heartbeat_interval=0.2)
    token = server.token(ttl=1)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    url = f"ws://{server.host}:{server.port}/ws/events?token={token}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        while time.time() <= expires:  # noqa: ASYNC110 - waiting for the clock is the point
            await asyncio.sleep(0.05)
        await ws.send('{"op": "subscribe", "topics": ["a"]}')
        messages = await receive_until_closed(ws)
    assert ws.close_code == 4401
    errors = [m for m in messages if m.get("op") == "error"]
    assert errors and "expired" in errors[-1]["message"], messages
