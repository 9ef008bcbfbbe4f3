"""Sessions and tickets say how long they really live, and a session that ended can log out."""

from __future__ import annotations

import time
from collections.abc import Callable
from http.cookies import SimpleCookie

import httpx
import pytest
from websockets.asyncio.client import connect

from jobcast.auth import Principal, Role
from jobcast.errors import Unauthorized
from tests.support import EventStream, LiveServer
from tests.ws_support import receive, receive_until_closed, send

LiveServerFactory = Callable[..., LiveServer]
COOKIES = ("jobcast_session", "jobcast_csrf")


def max_ages(response: httpx.Response) -> dict[str, int]:
    """The Max-Age of every cookie the response sets (0: deleted)."""
    ages = {}
    for header in response.headers.get_list("set-cookie"):
        for name, morsel in SimpleCookie(header).items():
            ages[name] = int(morsel["max-age"])
    return ages


def expired_session(server: LiveServer) -> str:
    """A session cookie as login minted it, from a token that has since expired (well past
    the clock-skew leeway), without waiting for it."""
    gone = Principal("alice", Role.USER, expires_at=time.time() - 120)
    return server.jc.tokens.mint_session(gone, 3600)


async def test_a_session_reports_the_lifetime_its_token_allows(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    # The session cannot outlive the bearer it came from: 60 s, not the 8 h session default.
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth(ttl=60))
    assert login.status_code == 200, login.text
    expires_in = login.json()["expires_in"]
    assert 55 <= expires_in <= 60
    assert max_ages(login) == dict.fromkeys(COOKIES, expires_in)


async def test_a_session_from_a_long_token_lasts_the_session_ttl(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(session_ttl_seconds=600)
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth(ttl=3600))
    assert login.json()["expires_in"] == 600
    assert max_ages(login) == dict.fromkeys(COOKIES, 600)


async def test_a_ticket_reports_the_lifetime_its_token_allows(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["news"]}, headers=server.auth(ttl=5)
    )
    assert response.status_code == 200, response.text
    assert 1 <= response.json()["expires_in"] <= 5  # not the 60 s a ticket may otherwise have


async def test_an_expired_session_still_logs_out(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    cookies = {"jobcast_session": expired_session(server), "jobcast_csrf": "c"}
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        # Where a credential is needed, the client learns it must log in again...
        jobs = await browser.get(f"{server.url}/api/jobs")
        assert (jobs.status_code, jobs.json()["reason"]) == (401, "token_expired")
        # ...and logging out clears the stale cookies instead of leaving them stuck.
        logout = await browser.delete(f"{server.url}/api/auth/session")
        assert logout.status_code == 204, logout.text
        assert max_ages(logout) == dict.fromkeys(COOKIES, 0)


async def test_a_broken_session_cookie_still_logs_out(server: LiveServer) -> None:
    cookies = {"jobcast_session": "not-a-session"}  # say, signed by a secret since rotated
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        logout = await browser.delete(f"{server.url}/api/auth/session")
    assert logout.status_code == 204, logout.text
    assert max_ages(logout) == dict.fromkeys(COOKIES, 0)


async def test_logging_out_a_live_session_still_needs_the_csrf_proof(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth())
    csrf = login.json()["csrf_token"]
    cookies = {"jobcast_session": login.cookies["jobcast_session"], "jobcast_csrf": csrf}
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        forged = await browser.delete(f"{server.url}/api/auth/session")
        assert forged.status_code == 403 and "set-cookie" not in forged.headers
        logout = await browser.delete(
            f"{server.url}/api/auth/session", headers={"X-CSRF-Token": csrf}
        )
        assert logout.status_code == 204
        assert max_ages(logout) == dict.fromkeys(COOKIES, 0)


async def test_an_expired_session_does_not_lock_out_public_topics(
    make_server: LiveServerFactory,
) -> None:
    server = make_server(public_topics="news/*")
    async with (
        httpx.AsyncClient(cookies={"jobcast_session": expired_session(server)}, timeout=10) as b,
        EventStream(b, f"{server.url}/api/events", params={"topic": "news/1"}) as events,
    ):
        assert events.response is not None and events.response.status_code == 200


@pytest.mark.parametrize("stale", ["expired", "garbage", "bearer"])
async def test_a_stale_session_counts_only_where_a_credential_is_needed(
    make_server: LiveServerFactory, stale: str
) -> None:
    server = make_server(public_topics="news/*", heartbeat_interval=0.2)
    cookie = {
        "expired": expired_session(server),
        "garbage": "not-a-session",
        "bearer": server.token(),  # a bearer token is not a session
    }[stale]
    with pytest.raises(Unauthorized) as refused:
        server.jc.tokens.verify_session(cookie)
    reason = refused.value.reason
    assert reason != "missing_token"
    async with httpx.AsyncClient(cookies={"jobcast_session": cookie}, timeout=10) as browser:
        # Needs no credential: served as for anyone.
        assert (await browser.get(f"{server.url}/health")).status_code == 200
        async with EventStream(browser, f"{server.url}/api/events?topic=news/1") as events:
            assert events.response is not None and events.response.status_code == 200
        headers = {"Cookie": f"jobcast_session={cookie}"}
        ws_base = f"ws://{server.host}:{server.port}"
        async with connect(f"{ws_base}/ws/events", additional_headers=headers) as ws:
            await send(ws, {"op": "subscribe", "topics": ["news/1"]})
            assert (await receive(ws))["op"] == "subscribed"
        # Needs one: a 401 that says why the cookie did not count.
        for response in (
            await browser.get(f"{server.url}/api/jobs"),
            await browser.get(f"{server.url}/api/events?topic=private/1"),
            await browser.post(f"{server.url}/api/events", json={"topic": "news/1", "type": "t"}),
        ):
            assert response.status_code == 401, response.text
            assert response.json()["reason"] == reason
        async with connect(f"{ws_base}/ws/jobs/nope", additional_headers=headers) as ws:
            messages = await receive_until_closed(ws)
        assert ws.close_code == 4401 and messages[-1]["error"] == "unauthorized"
