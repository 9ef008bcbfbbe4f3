"""Authentication: every way a token can be wrong is a 401 that says which."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.idp_support import ec_jwk
from tests.support import SECRET, LiveServer

LiveServerFactory = Callable[..., LiveServer]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def hs384(payload: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # PyJWT warns that the test secret is short for HS384
        warnings.simplefilter("ignore")
        return jwt.encode(payload, SECRET, algorithm="HS384")


def hmac_signed(payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with any bytes at all (PyJWT refuses PEM keys as secrets)."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def unsigned(payload: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


async def status_of(server: LiveServer, client: httpx.AsyncClient, token: str) -> tuple[int, str]:
    response = await client.get(
        f"{server.url}/api/jobs", headers={"Authorization": f"Bearer {token}"}
    )
    body = response.json()
    assert "Traceback" not in response.text
    return response.status_code, body.get("reason", "")


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: unsigned(claims()), "invalid_algorithm"),
        (lambda: hs384(claims()), "invalid_algorithm"),
        (
            lambda: jwt.encode(claims(), "another-secret-of-enough-length-xx", algorithm="HS256"),
            "bad_signature",
        ),
        (
            lambda: jwt.encode(claims(exp=int(time.time()) - 300), SECRET, algorithm="HS256"),
            "token_expired",
        ),
        (
            lambda: jwt.encode(claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256"),
            "token_not_yet_valid",
        ),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "missing_claim"),
        (lambda: jwt.encode(claims(role="root"), SECRET, algorithm="HS256"), "invalid_claim"),
        (lambda: jwt.encode(claims(topics=["a*b"]), SECRET, algorithm="HS256"), "invalid_claim"),
        (lambda: "not-a-jwt", "malformed_token"),
        (lambda: "a.b.c", "malformed_token"),
        (lambda: jwt.encode(claims(), RSA_KEY, algorithm="RS256"), "invalid_algorithm"),
        # Regressions: an "alg" that is a list answered 500 to anyone; an exp no float can
        # hold, 500 to a holder of the secret.
        (lambda: b64(b'{"alg": []}') + "." + b64(b"{}") + ".", "invalid_algorithm"),
        (lambda: hmac_signed(claims(exp=10**400), SECRET.encode()), "invalid_claim"),
    ],
    ids=[
        "alg-none",
        "wrong-alg",
        "wrong-key",
        "expired",
        "not-yet-valid",
        "no-exp",
        "bad-role",
        "bad-grant",
        "garbage",
        "bad-segments",
        "rs256-without-key",
        "alg-list",
        "exp-past-float",
    ],
)
async def test_bad_tokens_are_401_with_the_reason(
    server: LiveServer, client: httpx.AsyncClient, make_token: Callable[[], str], reason: str
) -> None:
    assert await status_of(server, client, make_token()) == (401, reason)


async def test_small_clock_skew_is_tolerated(server: LiveServer, client: httpx.AsyncClient) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert (await status_of(server, client, token))[0] == 200


async def test_issuer_and_audience_are_enforced(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(jwt_issuer="https://id.example", jwt_audience="jobcast")
    good = jwt.encode(claims(iss="https://id.example", aud="jobcast"), SECRET, algorithm="HS256")
    assert (await status_of(server, client, good))[0] == 200
    wrong = jwt.encode(claims(iss="https://evil.example", aud="jobcast"), SECRET, algorithm="HS256")
    assert await status_of(server, client, wrong) == (401, "wrong_audience")


async def test_rs256_with_a_public_key_and_no_key_confusion(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(jwt_public_key=RSA_PUBLIC_PEM)
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert (await status_of(server, client, token))[0] == 200
    # The public key used as an HMAC secret must not verify (algorithm confusion).
    forged = hmac_signed(claims(), RSA_PUBLIC_PEM.encode())
    assert await status_of(server, client, forged) == (401, "bad_signature")


@pytest.fixture
def jwks_url() -> Iterator[str]:
    jwk = ec_jwk(EC_KEY.public_key())  # full-length coordinates, whatever PyJWT's version
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "ES256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
    httpd.shutdown()
    httpd.server_close()


async def test_es256_tokens_verified_with_a_jwks_url(
    make_server: LiveServerFactory, client: httpx.AsyncClient, jwks_url: str
) -> None:
    server = make_server(jwt_jwks_url=jwks_url)
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "k1"})
    assert (await status_of(server, client, token))[0] == 200
    other = ec.generate_private_key(ec.SECP256R1())
    unknown = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "k1"})
    assert await status_of(server, client, unknown) == (401, "bad_signature")
    # tokens minted by `jobcast token` keep working beside the identity provider's
    assert (await status_of(server, client, server.token()))[0] == 200


async def test_a_grant_that_is_not_a_pattern_is_a_bad_token_not_a_bad_request(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    token = jwt.encode(claims(topics=["a*b"]), SECRET, algorithm="HS256")
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": "a", "type": "t"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (response.status_code, response.json()["reason"]) == (401, "invalid_claim")


async def test_a_csrf_token_that_is_not_ascii_is_refused_not_a_crash(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    login = await client.post(
        f"{server.url}/api/auth/session", headers=server.auth("svc", "service")
    )
    cookies = {"jobcast_session": login.cookies["jobcast_session"], "jobcast_csrf": "abc"}
    async with httpx.AsyncClient(cookies=cookies, timeout=10) as browser:
        for path, body in [
            ("/api/jobs", {"kind": "demo", "params": {"steps": 1, "delay": 0}}),
            ("/api/events", {"topic": "a", "type": "t"}),  # the fast path
        ]:
            response = await browser.post(
                f"{server.url}{path}", json=body, headers={"X-CSRF-Token": b"\xe9\xe9"}
            )
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"] == "forbidden"
            assert "X-CSRF-Token" in response.json()["message"]
