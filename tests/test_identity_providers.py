"""Tokens from identity providers, end to end: Keycloak-, Auth0-, Entra ID- and Okta-shaped
tokens, signed with RS256 and ES256 keys served as a JWKS by a real HTTP server, verified by a
real jobcast server, which then allows or refuses by the roles mapped from their claims."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.idp_support import IdentityProvider, serve_jwks
from tests.support import EventStream, LiveServer
from tests.test_library_use import readme_example

LiveServerFactory = Callable[..., LiveServer]

KEYCLOAK_ISSUER = "https://sso.example.com/realms/acme"
AUTH0_ISSUER = "https://acme.eu.auth0.com/"
ENTRA_TENANT = "6f1c5b1e-0000-4000-8000-00000000c0de"
ENTRA_ISSUER = f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"
OKTA_ISSUER = "https://acme.okta.com/oauth2/default"


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.add_key("rsa-1", "RS256")
    provider.add_key("ec-1", "ES256")
    with serve_jwks(provider):
        yield provider


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def publish(client: httpx.AsyncClient, server: LiveServer, token: str) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/events",
        json={"topic": "reports/q3", "type": "report.ready", "data": {"pages": 12}},
        headers=bearer(token),
    )


async def outcome(client: httpx.AsyncClient, server: LiveServer, token: str) -> str:
    """How a publish went: ``202``, or the status and why (``401 unknown_key``)."""
    response = await publish(client, server, token)
    if response.status_code == 202:
        return "202"
    body = response.json()
    return f"{response.status_code} {body.get('reason') or body.get('error')}"


async def reason(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("reason", response.json().get("error"))


def keycloak(idp: IdentityProvider, username: str, roles: list[str], **extra: Any) -> str:
    claims = {
        "iss": KEYCLOAK_ISSUER,
        "aud": ["jobcast", "account"],
        "sub": f"kc-{username}",
        "typ": "Bearer",  # Keycloak's own claim: not a jobcast ticket or session
        "azp": "jobcast-web",
        "preferred_username": username,
        "realm_access": {"roles": ["offline_access", "uma_authorization", *roles]},
        "resource_access": {"account": {"roles": ["manage-account"]}},
        "scope": "openid profile email",
        **extra,
    }
    return idp.token("rsa-1", claims)


@pytest.fixture
def keycloak_server(make_server: LiveServerFactory, idp: IdentityProvider) -> LiveServer:
    return make_server(
        jwt_jwks_url=idp.url,
        jwt_issuer=KEYCLOAK_ISSUER,
        jwt_audience="jobcast",
        jwt_subject_claim="preferred_username",
        jwt_roles_claim="realm_access.roles",
        jwt_role_map="jobcast-publisher=service,jobcast-admin=admin",
    )


async def test_keycloak_publisher_publishes_and_a_plain_user_subscribes_but_cannot_publish(
    keycloak_server: LiveServer, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = keycloak_server
    reader = keycloak(idp, "alice", [])
    publisher = keycloak(idp, "report-worker", ["jobcast-publisher"])
    url = f"{server.url}/api/events"
    async with EventStream(
        client, url, params={"topic": "reports/q3"}, headers=bearer(reader)
    ) as events:
        assert events.response is not None and events.response.status_code == 200
        assert await outcome(client, server, publisher) == "202"
        event = await events.next()
        assert (event.event, event.data) == ("report.ready", '{"pages":12}')
    denied = await publish(client, server, reader)
    assert (denied.status_code, denied.json()["error"]) == (403, "forbidden")


async def test_keycloak_subject_owns_jobs_and_the_mapped_admin_reads_them(
    keycloak_server: LiveServer, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = keycloak_server
    submitted = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}},
        headers=bearer(keycloak(idp, "alice", [])),
    )
    assert submitted.status_code == 202
    job = submitted.json()
    assert job["owner"] == "alice"  # preferred_username, not the opaque sub
    job_url = f"{server.url}/api/jobs/{job['id']}"
    other = await client.get(job_url, headers=bearer(keycloak(idp, "bob", [])))
    assert other.status_code == 404
    admin = await client.get(job_url, headers=bearer(keycloak(idp, "ops", ["jobcast-admin"])))
    assert admin.status_code == 200


async def test_keycloak_token_gets_a_stream_ticket_but_is_never_one_itself(
    keycloak_server: LiveServer, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = keycloak_server
    token = keycloak(idp, "alice", [])
    issued = await client.post(
        f"{server.url}/api/auth/ticket", json={"topics": ["reports/q3"]}, headers=bearer(token)
    )
    assert issued.status_code == 200
    url = f"{server.url}/api/events"
    async with EventStream(
        client, url, params={"topic": "reports/q3", "ticket": issued.json()["ticket"]}
    ) as events:
        assert events.response is not None and events.response.status_code == 200
    # The provider's token (even one claiming to be a ticket or a session) opens nothing as
    # a ticket or a cookie session: those are only ever jobcast's own HS256 credentials.
    forged = keycloak(idp, "alice", [], typ="ticket", jti="x", scope=["reports/q3"])
    for params, cookies in [
        ({"topic": "reports/q3", "ticket": token}, {}),
        ({"topic": "reports/q3", "ticket": forged}, {}),
        ({"topic": "reports/q3"}, {"jobcast_session": token}),
    ]:
        async with httpx.AsyncClient(cookies=cookies, timeout=10) as other:
            response = await other.get(url, params=params)
        assert response.status_code == 401, (params, cookies)
    as_bearer = await client.get(f"{server.url}/api/jobs", headers=bearer(forged))
    assert await reason(as_bearer) == (401, "wrong_credential_type")


async def test_auth0_namespaced_roles_and_an_audience_list(
    make_server: LiveServerFactory, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = make_server(
        jwt_jwks_url=idp.url,
        jwt_issuer=AUTH0_ISSUER,
        jwt_audience="https://jobcast.example.com/api",
        jwt_roles_claim="https://jobcast.example.com/roles",
    )

    def auth0(sub: str, roles: list[str]) -> str:
        claims = {
            "iss": AUTH0_ISSUER,
            "sub": sub,
            "aud": ["https://jobcast.example.com/api", "https://acme.eu.auth0.com/userinfo"],
            "azp": "Zx81Sp1q",
            "scope": "openid profile",
            "https://jobcast.example.com/roles": roles,
        }
        return idp.token("ec-1", claims)

    assert await outcome(client, server, auth0("auth0|worker", ["service"])) == "202"
    assert await outcome(client, server, auth0("auth0|64f0", ["editor"])) == "403 forbidden"
    jobs = await client.get(f"{server.url}/api/jobs", headers=bearer(auth0("auth0|64f0", [])))
    assert jobs.status_code == 200


async def test_entra_id_app_roles_scopes_and_object_id(
    make_server: LiveServerFactory, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = make_server(
        jwt_jwks_url=idp.url,
        jwt_issuer=ENTRA_ISSUER,
        jwt_audience="api://jobcast",
        jwt_subject_claim="oid",
        jwt_roles_claim="roles",
        jwt_role_map="Jobcast.Publisher=service",
        jwt_scope_roles="Jobcast.Admin=admin",
    )

    def entra(roles: list[str] | None, scp: str) -> str:
        claims: dict[str, Any] = {
            "iss": ENTRA_ISSUER,
            "aud": "api://jobcast",
            "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
            "tid": ENTRA_TENANT,
            "oid": "00000000-0000-0000-66f3-3332eca7ea81",
            "azp": "6e74172b-be56-4843-9ff4-e66a39bb12e3",
            "ver": "2.0",
            "scp": scp,
        }
        if roles is not None:
            claims["roles"] = roles
        return idp.token("rsa-1", claims)

    assert await outcome(client, server, entra(["Jobcast.Publisher"], "")) == "202"
    assert await outcome(client, server, entra(None, "User.Read Jobcast.Admin")) == "202"
    assert await outcome(client, server, entra(None, "User.Read")) == "403 forbidden"


async def test_okta_scope_list_and_groups(
    make_server: LiveServerFactory, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = make_server(
        jwt_jwks_url=idp.url,
        jwt_issuer=OKTA_ISSUER,
        jwt_audience="api://default",
        jwt_roles_claim="groups",
        jwt_role_map="Jobcast Admins=admin",
        jwt_scope_roles="jobcast.publish=service",
    )

    def okta(scp: list[str], groups: list[str]) -> str:
        claims = {
            "iss": OKTA_ISSUER,
            "aud": "api://default",
            "sub": "00u1a2b3c4D5e6F7g8h9",
            "cid": "0oa1b2c3d4",
            "uid": "00u1a2b3c4D5e6F7g8h9",
            "scp": scp,
            "groups": groups,
        }
        return idp.token("ec-1", claims)

    assert await outcome(client, server, okta(["openid", "jobcast.publish"], [])) == "202"
    assert await outcome(client, server, okta(["openid"], ["Jobcast Admins"])) == "202"
    assert await outcome(client, server, okta(["openid"], ["Everyone"])) == "403 forbidden"


async def test_key_rotation_is_one_refetch_and_forged_kids_do_not_storm_the_provider(
    make_server: LiveServerFactory, idp: IdentityProvider, client: httpx.AsyncClient
) -> None:
    server = make_server(jwt_jwks_url=idp.url, jwt_jwks_min_refetch_seconds=60)
    jobs = f"{server.url}/api/jobs"

    async def status(token: str) -> tuple[int, str]:
        return await reason(await client.get(jobs, headers=bearer(token)))

    assert (await status(idp.token("rsa-1", {"sub": "a"})))[0] == 200
    assert idp.fetches == 1
    idp.add_key("rsa-2", "RS256")  # the provider rotates: a new kid appears
    assert (await status(idp.token("rsa-2", {"sub": "a"})))[0] == 200
    assert idp.fetches == 2
    forged = [idp.token("rsa-2", {"sub": f"u{i}"}, header_kid=f"forged-{i}") for i in range(30)]
    results = await asyncio.gather(*(status(token) for token in forged))
    assert set(results) == {(401, "unknown_key")}
    assert idp.fetches == 2  # within the rate limit: no refetch at all
    # A key the provider never published, under a kid it did publish: a bad signature.
    idp.add_key("rogue", "RS256", publish=False)
    assert await status(idp.token("rogue", {"sub": "a"}, header_kid="rsa-1")) == (
        401,
        "bad_signature",
    )
    # jobcast's own HS256 tokens keep working beside the provider's.
    assert (await status(server.token()))[0] == 200


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"iss": "https://evil.example.com/realms/acme"}, "wrong_audience"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"exp": int(time.time()) - 600}, "token_expired"),
        ({"preferred_username": None}, "missing_claim"),
    ],
    ids=["wrong-issuer", "wrong-audience", "expired", "no-subject"],
)
async def test_wrong_provider_tokens_are_401_with_the_reason(
    keycloak_server: LiveServer,
    idp: IdentityProvider,
    client: httpx.AsyncClient,
    claims: dict[str, Any],
    expected: str,
) -> None:
    token = keycloak(idp, "alice", [], **claims)
    response = await client.get(f"{keycloak_server.url}/api/jobs", headers=bearer(token))
    assert await reason(response) == (401, expected)


async def test_the_readme_host_app_accepts_keycloak_tokens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    idp: IdentityProvider,
    client: httpx.AsyncClient,
) -> None:
    """The README's "Use it inside your FastAPI app", configured for Keycloak by environment."""
    settings = {
        "DATA_DIR": str(tmp_path),
        "JWT_JWKS_URL": idp.url,
        "JWT_ISSUER": KEYCLOAK_ISSUER,
        "JWT_AUDIENCE": "jobcast",
        "JWT_SUBJECT_CLAIM": "preferred_username",
        "JWT_ROLES_CLAIM": "realm_access.roles",
        "JWT_ROLE_MAP": "jobcast-publisher=service",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"JOBCAST_{name}", value)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    server = LiveServer(namespace["app"]).start()  # type: ignore[arg-type]
    try:
        viewer = bearer(keycloak(idp, "alice", []))
        url = f"{server.url}/jobcast/api/events"  # the README mounts jobcast under a prefix
        async with EventStream(client, url, params={"topic": "videos/*"}, headers=viewer) as events:
            assert events.response is not None and events.response.status_code == 200
            # The host's own route publishes; a Keycloak publisher publishes through jobcast.
            host = await client.post(f"{server.url}/videos/7/status", params={"status": "DONE"})
            assert host.status_code == 200
            published = await client.post(
                url,
                json={"topic": "videos/8", "type": "video.status", "data": {"status": "QUEUED"}},
                headers=bearer(keycloak(idp, "encoder", ["jobcast-publisher"])),
            )
            assert published.status_code == 202
            assert [(e.event, e.data) for e in await events.take(2)] == [
                ("video.status", '{"status":"DONE"}'),
                ("video.status", '{"status":"QUEUED"}'),
            ]
        refused = await client.post(
            url, json={"topic": "videos/9", "type": "video.status"}, headers=viewer
        )
        assert refused.status_code == 403
    finally:
        server.stop()
