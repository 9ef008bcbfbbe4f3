"""The memory of verified tokens (verified_tokens.py) saves work and never extends a token."""

from __future__ import annotations

import time

import jwt
import pytest

from jobcast.auth import Principal, Role, TokenAuthority
from jobcast.errors import InvalidInput, Unauthorized
from jobcast.verified_tokens import VerifiedTokens
from tests.support import SECRET


def principal(expires_at: float | None = 1_000.0, via: str = "bearer") -> Principal:
    return Principal("alice", Role.USER, expires_at=expires_at, via=via)


def test_a_remembered_token_is_answered_until_the_ttl() -> None:
    memory = VerifiedTokens(ttl=60)
    memory.remember("t", principal(), now=100)
    assert memory.get("t", now=159.9, via="bearer") == principal()
    assert memory.get("t", now=160, via="bearer") is None
    assert len(memory) == 0  # the stale entry is gone


def test_a_remembered_token_is_never_answered_past_its_expiry() -> None:
    memory = VerifiedTokens(ttl=60)
    memory.remember("t", principal(expires_at=110), now=100)
    assert memory.get("t", now=109, via="bearer") is not None
    assert memory.get("t", now=110, via="bearer") is None


def test_the_memory_is_bounded_and_drops_the_least_recently_used() -> None:
    memory = VerifiedTokens(size=2)
    memory.remember("a", principal(), now=0)
    memory.remember("b", principal(), now=0)
    assert memory.get("a", now=1, via="bearer") is not None  # "b" is now the oldest use
    memory.remember("c", principal(), now=1)
    assert len(memory) == 2
    assert memory.get("b", now=1, via="bearer") is None
    assert memory.get("a", now=1, via="bearer") is not None


def test_how_the_token_arrived_is_the_current_request_s() -> None:
    memory = VerifiedTokens()
    memory.remember("t", principal(), now=0)
    remembered = memory.get("t", now=1, via="query")
    assert remembered is not None and remembered.via == "query"


async def test_the_authority_remembers_good_tokens_and_not_bad_ones() -> None:
    authority = TokenAuthority(SECRET)
    exp = int(time.time()) + 600
    token = jwt.encode({"sub": "svc", "role": "service", "exp": exp}, SECRET, algorithm="HS256")
    first = await authority.verify(token)
    assert await authority.verify(token) == first
    assert (await authority.verify(token, via="query")).via == "query"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):  # a failure is not remembered: it fails again, for the same reason
        with pytest.raises(Unauthorized) as refused:
            await authority.verify(forged)
        assert refused.value.reason == "bad_signature"
    assert len(authority._verified) == 1


async def test_an_expired_token_is_refused_even_though_it_verified_before() -> None:
    authority = TokenAuthority(SECRET, leeway=0)
    exp = time.time() + 1
    token = jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256")
    await authority.verify(token)
    now = time.time()
    assert authority._verified.get(token, now, "bearer") is not None
    # What the next verification will see once the clock passes exp.
    assert authority._verified.get(token, exp, "bearer") is None


def test_a_secret_shaped_like_a_public_key_is_refused_once_at_start() -> None:
    """The secret is checked when the authority is made (jwt_keys.checked_hmac_key), not per
    token, and a public key pasted as the shared secret is still refused."""
    pem = "\n".join(["-----BEGIN PUBLIC KEY-----", "MFkwEwYHKoZIzj0C", "-----END PUBLIC KEY-----"])
    with pytest.raises(InvalidInput, match="JWT secret cannot sign tokens"):
        TokenAuthority(pem)
