"""A bounded memory of recently verified bearer tokens.

Backends publish with one long-lived service token, and clients come back (after a deploy, a
network change, a drained instance) with the token they already used: checking the same
signature again cost about 30 µs every time, a quarter of an HTTP publish. A token that
verified within the last ``ttl`` seconds is answered from here, never past its own ``exp``:
the memory can only make a token valid for less time than verification would, never longer,
and a key that an identity provider withdraws (JWKS rotation) stops being honoured within
``ttl``. Only successful verifications are kept, at most ``size`` of them, least recently used
out first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from jobcast.principal import Principal


class VerifiedTokens:
    def __init__(self, size: int = 4096, ttl: float = 60.0) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float, via: str) -> Principal | None:
        """The principal ``token`` verified to, if it did so recently and has not expired."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, good_until = entry
        if now >= good_until:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return principal if principal.via == via else replace(principal, via=via)

    def remember(self, token: str, principal: Principal, now: float) -> None:
        good_until = now + self.ttl
        if principal.expires_at is not None:
            good_until = min(good_until, principal.expires_at)
        self._entries[token] = (principal, good_until)
        self._entries.move_to_end(token)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
