"""The JWKS cache (jwks.py): rotation is one refetch, forged key ids are not a fetch storm."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from jobcast.errors import Unauthorized
from jobcast.jwks import JwksKeys
from tests.idp_support import IdentityProvider, serve_jwks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    idp = IdentityProvider()
    idp.add_key("k1", "RS256")
    with serve_jwks(idp):
        yield idp


def cache(provider: IdentityProvider, clock: Clock) -> JwksKeys:
    return JwksKeys(provider.url, refresh_seconds=300, min_refetch_seconds=30, clock=clock)


async def test_keys_are_fetched_once_and_cached(provider: IdentityProvider) -> None:
    clock = Clock()
    keys = cache(provider, clock)
    first = await keys.key("k1")
    assert await asyncio.gather(*(keys.key("k1") for _ in range(20))) == [first] * 20
    assert provider.fetches == 1
    clock.now += 300  # stale: fetched again on next use
    await keys.key("k1")
    assert provider.fetches == 2


async def test_a_new_kid_is_one_refetch_and_forged_kids_are_rate_limited(
    provider: IdentityProvider,
) -> None:
    clock = Clock()
    keys = cache(provider, clock)
    await keys.key("k1")
    provider.add_key("k2", "ES256")  # the provider rotates
    assert (await keys.key("k2")).key_id == "k2"
    assert provider.fetches == 2
    results = await asyncio.gather(
        *(keys.key(f"forged-{i}") for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, Unauthorized) and r.reason == "unknown_key" for r in results)
    assert provider.fetches == 2  # within min_refetch_seconds of the last refetch: none
    clock.now += 30
    await asyncio.gather(*(keys.key("forged") for _ in range(10)), return_exceptions=True)
    assert provider.fetches == 3  # one per interval, however many forged tokens arrive


async def test_concurrent_first_uses_share_one_fetch(provider: IdentityProvider) -> None:
    keys = cache(provider, Clock())
    await asyncio.gather(*(keys.key("k1") for _ in range(20)))
    assert provider.fetches == 1


async def test_a_failed_refresh_keeps_the_old_keys(provider: IdentityProvider) -> None:
    clock = Clock()
    keys = cache(provider, clock)
    await keys.key("k1")
    provider.published.clear()  # an empty set does not parse: the refresh fails
    clock.now += 300
    assert (await keys.key("k1")).key_id == "k1"
    assert provider.fetches == 2
    await keys.key("k1")
    assert provider.fetches == 2  # not retried before min_refetch_seconds


async def test_an_unreachable_provider_is_401_jwks_unavailable() -> None:
    idp = IdentityProvider()
    with serve_jwks(idp):
        url = idp.url
    keys = JwksKeys(url, timeout=2)
    with pytest.raises(Unauthorized) as caught:
        await keys.key("k1")
    assert caught.value.reason == "jwks_unavailable"


async def test_a_single_key_serves_tokens_without_a_kid(provider: IdentityProvider) -> None:
    keys = cache(provider, Clock())
    assert (await keys.key(None)).key_id == "k1"


async def test_shared_secrets_and_encryption_keys_in_the_set_are_ignored(
    provider: IdentityProvider,
) -> None:
    secret = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "oct-1"}
    encryption = {**json.loads(provider.jwks())["keys"][0], "kid": "enc-1", "use": "enc"}
    published = provider.jwks

    def with_extra_keys() -> bytes:
        document = json.loads(published())
        document["keys"] += [secret, encryption]
        return json.dumps(document).encode()

    provider.jwks = with_extra_keys  # type: ignore[method-assign]
    keys = cache(provider, Clock())
    assert (await keys.key("k1")).key_id == "k1"
    for kid in ("oct-1", "enc-1"):
        with pytest.raises(Unauthorized) as caught:
            await keys.key(kid)
        assert caught.value.reason == "unknown_key"
