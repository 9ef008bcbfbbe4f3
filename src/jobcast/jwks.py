"""An identity provider's signing keys, from its JWKS URL.

PyJWT's ``PyJWKClient`` fetches with blocking ``urllib`` and refetches on every unknown
``kid``: a forged ``kid`` per request would make jobcast hammer the provider. Here the keys
are fetched with httpx on the event loop, parsed by PyJWT's own ``PyJWKSet`` (no key handling
of ours), and cached:

1. keys older than ``refresh_seconds`` are fetched again on the next use; if that fails the
   old keys stay in use (a provider's hiccup does not log everyone out);
2. a ``kid`` not in the cache triggers one refetch (the provider rotated its keys), but at
   most one such refetch per ``min_refetch_seconds``: tokens with forged ``kid`` s are
   refused from the cache after that;
3. one fetch at a time: requests that arrive while a fetch runs wait for it and use its
   result instead of fetching again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
import jwt
import orjson

from jobcast.errors import Unauthorized
from jobcast.jwt_keys import HMAC

log = logging.getLogger("jobcast.jwks")

#: A key set larger than this is refused (a provider's is a few kilobytes).
MAX_JWKS_BYTES = 1024 * 1024


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        refresh_seconds: float = 300.0,
        min_refetch_seconds: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.timeout = timeout
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_refetch = -float("inf")  # the last refetch for an unknown kid (2)
        self._retry_at = -float("inf")  # after a failed fetch, none before this
        self._generation = 0  # bumped when a fetch attempt ends, so waiters know one ran
        self._lock = asyncio.Lock()
        #: Fetches attempted so far (for tests and metrics).
        self.fetches = 0

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key that signed a token whose header names ``kid``."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.refresh_seconds
        if stale and now >= self._retry_at:
            await self._fetch(self._generation, for_unknown_kid=False)  # 1
        found = self._find(kid)
        if found is None and self._may_refetch(self._clock()):
            await self._fetch(self._generation, for_unknown_kid=True)  # 2
            found = self._find(kid)
        if found is not None:
            return found
        if not self._keys:
            raise Unauthorized(
                "the identity provider's keys could not be fetched", reason="jwks_unavailable"
            )
        raise Unauthorized(
            "no key of the identity provider matches the token", reason="unknown_key"
        )

    def _may_refetch(self, now: float) -> bool:
        return now - self._last_refetch >= self.min_refetch_seconds and now >= self._retry_at

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            # A provider with a single key may leave kid out of its tokens.
            found = next(iter(self._keys.values()))
        return found

    async def _fetch(self, generation: int, *, for_unknown_kid: bool) -> None:
        async with self._lock:
            if self._generation != generation:
                return  # 3: a fetch ran while this request waited
            now = self._clock()
            if for_unknown_kid:
                if not self._may_refetch(now):
                    return
                self._last_refetch = now
            self.fetches += 1
            try:
                keys = await self._download()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                self._generation += 1
                # Not retried before min_refetch_seconds, so an outage is not hammered; the
                # keys we have stay in use meanwhile (1).
                log.warning("could not fetch the JWKS at %s: %s", self.url, exc)
                self._retry_at = now + self.min_refetch_seconds
                return
            self._generation += 1  # after the attempt: whoever waited for it sees it ran
            self._keys = keys
            self._fetched_at = self._clock()

    async def _download(self) -> dict[str | None, jwt.PyJWK]:
        async with (
            httpx.AsyncClient(timeout=self.timeout) as client,
            client.stream("GET", self.url, headers={"Accept": "application/json"}) as response,
        ):
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
        document = orjson.loads(body)  # orjson.JSONDecodeError is a ValueError
        if not isinstance(document, dict):
            raise ValueError("the key set is not a JSON object")
        # PyJWKSet skips keys of types it cannot use and raises if none is left.
        key_set = jwt.PyJWKSet.from_dict(document)
        # Signing keys only, and never a shared secret ("oct"): the provider's keys verify
        # asymmetric signatures, and HMAC is jobcast's own secret alone.
        return {
            key.key_id: key
            for key in key_set.keys
            if key.public_key_use in ("sig", None) and key.algorithm_name not in HMAC
        }
