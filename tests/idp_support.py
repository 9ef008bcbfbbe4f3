"""Test support: an identity provider's signing keys, served as a JWKS by a real HTTP server."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class IdentityProvider:
    """Signing keys by kid, the JWKS that publishes some of them, and a count of fetches."""

    keys: dict[str, SigningKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    fetches: int = 0
    url: str = ""

    def add_key(self, kid: str, alg: str, *, publish: bool = True) -> None:
        if alg.startswith("RS"):
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        if publish:
            self.published.append(kid)

    def jwks(self) -> bytes:
        entries = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
                jwk["alg"] = "RS256"
            else:
                jwk = {**ec_jwk(key.public_key()), "alg": "ES256"}
            entries.append({**jwk, "kid": kid, "use": "sig"})
        return json.dumps({"keys": entries}).encode()

    def token(self, kid: str, claims: dict[str, Any], *, header_kid: str | None = None) -> str:
        key = self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        payload = {"iat": int(time.time()), "exp": int(time.time()) + 600, **claims}
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": header_kid or kid})


def ec_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """A P-256 public key as a JWK, its coordinates at their full 32 bytes as RFC 7518
    (6.2.1.2) requires and providers publish them. (PyJWT's ``to_jwk`` before 2.10 dropped
    leading zero bytes, about one key in a hundred, which its own ``PyJWK`` then refuses.)"""
    numbers = public_key.public_numbers()

    def coordinate(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    return {"kty": "EC", "crv": "P-256", "x": coordinate(numbers.x), "y": coordinate(numbers.y)}


@contextmanager
def serve_jwks(provider: IdentityProvider) -> Iterator[IdentityProvider]:
    """Serve ``provider``'s JWKS on 127.0.0.1 until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider.fetches += 1
            body = provider.jwks()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{httpd.server_address[1]}/protocol/openid-connect/certs"
    try:
        yield provider
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
