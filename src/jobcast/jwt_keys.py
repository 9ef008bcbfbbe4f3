"""Key material for JWTs: the data directory's shared secret, that secret as HMAC keys
checked once, and the unverified ``alg`` of a token (which only chooses the key)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm

from jobcast.errors import InvalidInput, Unauthorized

SECRET_FILE = "jwt_secret"
HMAC = ("HS256", "HS384", "HS512")
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"})


def checked_hmac_key(secret: str, algorithm: str) -> jwt.PyJWK:
    """``secret`` as the key of an HMAC ``algorithm``, checked once instead of per token.

    PyJWT prepares the key again on every decode, a PyJWK's too: for an HMAC secret it parses
    it as JSON and tests it for PEM, SSH and DER shapes (so that a public key is never used as
    a shared secret). That was a third of verifying a token, on every stream a new client
    opens. The same checks run once here; each decode then gets the checked bytes back.
    """
    encoded = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
    key = jwt.PyJWK({"kty": "oct", "k": encoded}, algorithm=algorithm)
    try:
        key.Algorithm = _CheckedOnce(key.Algorithm, key.key)
    except jwt.InvalidKeyError as exc:
        raise InvalidInput(f"the JWT secret cannot sign tokens: {exc}") from None
    return key


class _CheckedOnce(HMACAlgorithm):
    """An HMAC algorithm that has checked one key already (``checked_hmac_key``)."""

    def __init__(self, algorithm: Any, key: bytes) -> None:
        super().__init__(algorithm.hash_alg)
        self._key = key
        self._checked = super().prepare_key(key)  # raises for a key that is not a secret

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._key or key is self._checked:
            return self._checked
        return super().prepare_key(key)


def unverified_header(token: str) -> dict[str, Any]:
    """A token's header, read without verifying anything: its ``alg`` and ``kid`` only choose
    the key, and ``jwt.decode`` then checks everything. (PyJWT's own reader decodes and
    validates the whole token, which doubled the cost of every stream opened.)"""
    segment = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error and orjson's error are ValueErrors
        raise Unauthorized("the token is malformed", reason="malformed_token") from None
    if not isinstance(header, dict):
        return {}
    # Only strings name an algorithm or a key: a list or object here would be looked up in
    # sets and dicts by the caller, where it would raise instead of being refused.
    return {name: value for name, value in header.items() if isinstance(value, str)}


def unverified_alg(token: str) -> str | None:
    """The ``alg`` of a token's header, unverified (see :func:`unverified_header`)."""
    alg = unverified_header(token).get("alg")
    return alg if isinstance(alg, str) else None


def load_or_create_secret(data_dir: Path) -> str:
    """The data directory's HS256 secret, created (mode 0600) on first use."""
    path = data_dir / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Write a private temporary file, then link it into place: a concurrent starter either
    # wins the link or reads a complete file, never a half-written one.
    temporary = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:
        secret = path.read_text().strip()
    finally:
        temporary.unlink()
    return secret
