"""Credentials: verifying and minting JWTs, and who a request is (its :class:`Principal`).

Three kinds of JWT reach the server, told apart by the ``typ`` claim so one can never stand in
for another:

- bearer tokens (no ``typ``): from an identity provider (RS256/ES256 with a public key or a
  JWKS URL) or minted by ``jobcast token`` (HS256 with the shared secret);
- stream tickets (``typ: ticket``): minted by ``POST /api/auth/ticket``, redeemable for a
  minute, for one use, on the topics they name only; they keep long-lived tokens out of URLs.
  The stream a ticket opens lasts as long as the credential it was issued from (``cred_exp``),
  not the ticket: otherwise every browser stream would end, and spend a ticket, each minute;
- sessions (``typ: session``): the value of the HttpOnly cookie set by ``POST /api/auth/session``.

Tickets and sessions are always signed with the local secret (HS256), whatever signs bearers.
A bearer token signed with the identity provider's keys is read through the configured
:class:`~jobcast.identity.ClaimMapping`; one signed with the secret is jobcast's own.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import jwt

from jobcast.errors import Unauthorized
from jobcast.identity import ClaimMapping, principal_from_claims, timestamp
from jobcast.jwks import JwksKeys
from jobcast.jwt_keys import (
    ASYMMETRIC,
    HMAC,
    checked_hmac_key,
    load_or_create_secret,
    unverified_header,
)
from jobcast.principal import Principal, Role
from jobcast.verified_tokens import VerifiedTokens

__all__ = ["KeyConfig", "Principal", "Role", "TokenAuthority", "principal_from_claims"]

if TYPE_CHECKING:
    from jobcast.config import Settings

TICKET = "ticket"
SESSION = "session"
#: The ticket claim carrying the expiry of the credential the ticket was issued from.
CREDENTIAL_EXP = "cred_exp"


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """How bearer tokens are verified. HS256 with ``secret`` always works (tokens minted by
    ``jobcast token``); an identity provider's tokens need ``public_key`` or ``jwks_url``."""

    secret: str
    public_key: str | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    #: How the identity provider's tokens name the subject and the roles.
    mapping: ClaimMapping = field(default_factory=ClaimMapping)
    jwks_refresh_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 30.0


class TokenAuthority:
    """Verifies and mints every credential jobcast accepts."""

    def __init__(self, keys: KeyConfig | str, **options: Any) -> None:
        if isinstance(keys, str):
            keys = KeyConfig(secret=keys, **options)
        self.keys = keys
        #: Bearer tokens verified in the last minute (``verified_tokens.py``).
        self._verified = VerifiedTokens()
        self._jwks = (
            JwksKeys(
                keys.jwks_url,
                refresh_seconds=keys.jwks_refresh_seconds,
                min_refetch_seconds=keys.jwks_min_refetch_seconds,
            )
            if keys.jwks_url
            else None
        )
        # The shared secret as keys checked once, one per HMAC algorithm (checked_hmac_key).
        self._hmac = {alg: checked_hmac_key(keys.secret, alg) for alg in HMAC}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        """The authority a server or the CLI uses: the configured secret, or the one kept in
        the data directory (created there, mode 0600, on first use), and any identity
        provider's keys."""
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value()
        else:
            secret = load_or_create_secret(settings.data_dir)
        algorithms = settings.jwt_algorithms or ["HS256"]
        if not settings.jwt_algorithms and (settings.jwt_public_key or settings.jwt_jwks_url):
            algorithms = ["HS256", "RS256", "ES256"]
        return cls(
            KeyConfig(
                secret=secret,
                public_key=settings.jwt_public_key,
                jwks_url=settings.jwt_jwks_url,
                algorithms=tuple(a for a in algorithms if a.lower() != "none"),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway=settings.jwt_leeway_seconds,
                mapping=ClaimMapping(
                    subject_claim=settings.jwt_subject_claim,
                    roles_claim=settings.jwt_roles_claim,
                    role_map=settings.jwt_role_map,
                    scope_roles=settings.jwt_scope_roles,
                ),
                jwks_refresh_seconds=settings.jwt_jwks_refresh_seconds,
                jwks_min_refetch_seconds=settings.jwt_jwks_min_refetch_seconds,
            )
        )

    # -- verifying -------------------------------------------------------------------------

    def verified(self, token: str) -> Principal | None:
        """The principal of a bearer token ``verify`` accepted in the last minute, and
        ``None`` for any other (nothing is verified here)."""
        return self._verified.get(token, time.time(), "bearer")

    async def verify(self, token: str, *, via: str = "bearer") -> Principal:
        """Verify a bearer token (fetching JWKS keys without blocking the event loop when
        needed); one that verified in the last minute is answered from memory, until its
        expiry at the latest."""
        now = time.time()
        known = self._verified.get(token, now, via)
        if known is not None:
            return known
        header = unverified_header(token)
        # Signed with the provider's keys: the provider's token, read through the mapping.
        external = header.get("alg") in ASYMMETRIC
        mapping = self.keys.mapping
        key = await self._bearer_key(header)
        required = ["exp", "sub"] if not external or mapping.subject_claim == "sub" else ["exp"]
        claims = self._decode(token, key, self._bearer_algorithms(key), required)
        if claims.get("typ") in (TICKET, SESSION):
            raise Unauthorized(
                f"a {claims['typ']} is not a bearer token", reason="wrong_credential_type"
            )
        if external:
            principal = mapping.principal(claims, via)
        else:
            principal = principal_from_claims(claims, via)
        self._verified.remember(token, principal, now)
        return principal

    def verify_ticket(self, ticket: str) -> tuple[Principal, str, float]:
        """Verify a stream ticket: its principal, its id and its expiry. The caller spends
        the id (a ticket opens one stream), see ``server/tickets.py``."""
        claims = self._decode(ticket, self._hmac["HS256"], ["HS256"])
        if claims.get("typ") != TICKET or not isinstance(claims.get("jti"), str):
            raise Unauthorized("this is not a stream ticket", reason="wrong_credential_type")
        scope = claims.get("scope")
        if not isinstance(scope, list) or not all(isinstance(t, str) for t in scope):
            raise Unauthorized("the ticket names no topics", reason="invalid_claim")
        principal = principal_from_claims(claims)
        redeem_by = principal.expires_at or 0.0  # exp is required: never the 0
        # The ticket's own exp only bounds when it may be redeemed; its stream ends with the
        # credential it came from. (A ticket without the claim keeps its own exp.)
        stream_exp = claims.get(CREDENTIAL_EXP)
        if isinstance(stream_exp, int | float) and not isinstance(stream_exp, bool):
            principal = replace(principal, expires_at=timestamp(stream_exp, CREDENTIAL_EXP))
        ticket_principal = replace(principal, ticket_topics=tuple(scope), via="ticket")
        return ticket_principal, claims["jti"], redeem_by

    def verify_session(self, value: str) -> Principal:
        claims = self._decode(value, self._hmac["HS256"], ["HS256"])
        if claims.get("typ") != SESSION:
            raise Unauthorized("this is not a session", reason="wrong_credential_type")
        return principal_from_claims(claims, "cookie")

    async def _bearer_key(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if alg not in ASYMMETRIC:
            return self._hmac.get(str(alg), self._hmac["HS256"])
        if self._jwks is not None:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise Unauthorized("the token's 'kid' is not a string", reason="malformed_token")
            return (await self._jwks.key(kid)).key
        if self.keys.public_key is not None:
            return self.keys.public_key
        return self._hmac["HS256"]  # decoding fails with "algorithm not accepted"

    def _bearer_algorithms(self, key: Any) -> list[str]:
        symmetric = isinstance(key, jwt.PyJWK) and key.algorithm_name in HMAC
        # A shared secret never verifies an asymmetric algorithm and vice versa: the classic
        # "RS256 public key used as an HS256 secret" confusion is impossible.
        return [a for a in self.keys.algorithms if (a not in ASYMMETRIC) == symmetric]

    def _decode(
        self, token: str, key: Any, algorithms: list[str], required: list[str] | None = None
    ) -> dict[str, Any]:
        keys = self.keys
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=keys.issuer,
                audience=keys.audience,
                leeway=keys.leeway,
                options={
                    "require": required or ["exp", "sub"],
                    "verify_aud": keys.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", reason="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet", reason="token_not_yet_valid") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(
                f"the token's algorithm is not accepted (use {', '.join(algorithms) or 'none'})",
                reason="invalid_algorithm",
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "the token's signature does not verify", reason="bad_signature"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(
                f"the token lacks the {exc.claim!r} claim", reason="missing_claim"
            ) from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
            raise Unauthorized(
                f"the token is not for this service: {exc}", reason="wrong_audience"
            ) from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is malformed", reason="malformed_token") from None
        return claims

    # -- minting ---------------------------------------------------------------------------

    def mint(
        self,
        subject: str,
        *,
        role: Role | str = Role.USER,
        ttl: float = 3600.0,
        grants: list[str] | None = None,
        **claims: Any,
    ) -> str:
        """An HS256 bearer token (what ``jobcast token`` prints)."""
        now = time.time()
        payload: dict[str, Any] = {"sub": subject, "role": Role(role).value, "iat": int(now)}
        # Rounded up: with iat truncated, ``int(now) + ttl`` gave a 1 s token as little as a
        # few milliseconds of life, and a stream opened with it was refused as expired.
        payload["exp"] = math.ceil(now + ttl)
        if grants:
            payload["topics"] = list(grants)
        if self.keys.issuer:
            payload["iss"] = self.keys.issuer
        if self.keys.audience:
            payload["aud"] = self.keys.audience
        payload.update(claims)
        return jwt.encode(payload, self.keys.secret, algorithm="HS256")

    def mint_ticket(self, principal: Principal, topics: list[str], ttl: float) -> str:
        """A one-use ticket for ``topics``, never outliving the credential it came from."""
        claims: dict[str, Any] = {"typ": TICKET, "scope": topics, "jti": _nonce()}
        if principal.expires_at is not None:
            claims[CREDENTIAL_EXP] = principal.expires_at
        return self._mint_derived(principal, ttl, **claims)

    def mint_session(self, principal: Principal, ttl: float) -> str:
        return self._mint_derived(principal, ttl, typ=SESSION)

    def _mint_derived(self, principal: Principal, ttl: float, **claims: Any) -> str:
        # Whole seconds: rounded up for the ttl (a truncated fraction made a 1 s ticket expire
        # as it was issued), down for the credential's expiry (never outlive it).
        expires = math.ceil(time.time() + ttl)
        if principal.expires_at is not None:
            expires = min(expires, math.floor(principal.expires_at))
        return self.mint(
            principal.subject,
            role=principal.role,
            grants=list(principal.grants),
            **claims,
            exp=expires,  # overrides mint's own, from its ttl
        )


def _nonce() -> str:
    return secrets.token_urlsafe(12)
