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
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import jwt

from jobcast.errors import InvalidInput, Unauthorized
from jobcast.jwt_keys import (
    ASYMMETRIC,
    HMAC,
    checked_hmac_key,
    load_or_create_secret,
    unverified_alg,
)
from jobcast.topics import TopicPattern
from jobcast.verified_tokens import VerifiedTokens

if TYPE_CHECKING:
    from jobcast.config import Settings

TICKET = "ticket"
SESSION = "session"
#: The ticket claim carrying the expiry of the credential the ticket was issued from.
CREDENTIAL_EXP = "cred_exp"


class Role(StrEnum):
    ADMIN = "admin"  # everything
    SERVICE = "service"  # publish anywhere, read anything: workers and other backends
    USER = "user"  # their own jobs, public topics and what they are granted


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    #: Topic patterns the token grants beyond the role (claim ``topics``).
    grants: tuple[str, ...] = ()
    expires_at: float | None = None
    #: For a stream ticket: the only topic patterns it may open; ``None`` for other credentials.
    ticket_topics: tuple[str, ...] | None = None
    #: How the credential arrived: ``bearer``, ``query``, ``ticket`` or ``cookie``.
    via: str = "bearer"

    @property
    def is_privileged(self) -> bool:
        return self.role in (Role.ADMIN, Role.SERVICE)


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


class TokenAuthority:
    """Verifies and mints every credential jobcast accepts."""

    def __init__(self, keys: KeyConfig | str, **options: Any) -> None:
        if isinstance(keys, str):
            keys = KeyConfig(secret=keys, **options)
        self.keys = keys
        #: Bearer tokens verified in the last minute (``verified_tokens.py``).
        self._verified = VerifiedTokens()
        self._jwks = jwt.PyJWKClient(keys.jwks_url, lifespan=300) if keys.jwks_url else None
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
            )
        )

    # -- verifying -------------------------------------------------------------------------

    async def verify(self, token: str, *, via: str = "bearer") -> Principal:
        """Verify a bearer token (fetching JWKS keys off the event loop when needed); one that
        verified in the last minute is answered from memory, until its expiry at the latest."""
        now = time.time()
        known = self._verified.get(token, now, via)
        if known is not None:
            return known
        key = await self._bearer_key(token)
        claims = self._decode(token, key, self._bearer_algorithms(key))
        if claims.get("typ") in (TICKET, SESSION):
            raise Unauthorized(
                f"a {claims['typ']} is not a bearer token", reason="wrong_credential_type"
            )
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
            principal = replace(principal, expires_at=_timestamp(stream_exp, CREDENTIAL_EXP))
        ticket_principal = replace(principal, ticket_topics=tuple(scope), via="ticket")
        return ticket_principal, claims["jti"], redeem_by

    def verify_session(self, value: str) -> Principal:
        claims = self._decode(value, self._hmac["HS256"], ["HS256"])
        if claims.get("typ") != SESSION:
            raise Unauthorized("this is not a session", reason="wrong_credential_type")
        return principal_from_claims(claims, "cookie")

    async def _bearer_key(self, token: str) -> Any:
        alg = unverified_alg(token)
        if alg not in ASYMMETRIC:
            return self._hmac.get(str(alg), self._hmac["HS256"])
        if self._jwks is not None:
            jwks = self._jwks
            try:
                signing_key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError:
                raise Unauthorized(
                    "the identity provider's keys could not be fetched", reason="jwks_unavailable"
                ) from None
            except jwt.PyJWTError:
                raise Unauthorized(
                    "no key of the identity provider matches the token", reason="unknown_key"
                ) from None
            return signing_key.key
        if self.keys.public_key is not None:
            return self.keys.public_key
        return self._hmac["HS256"]  # decoding fails with "algorithm not accepted"

    def _bearer_algorithms(self, key: Any) -> list[str]:
        symmetric = isinstance(key, jwt.PyJWK) and key.algorithm_name in HMAC
        # A shared secret never verifies an asymmetric algorithm and vice versa: the classic
        # "RS256 public key used as an HS256 secret" confusion is impossible.
        return [a for a in self.keys.algorithms if (a not in ASYMMETRIC) == symmetric]

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        keys = self.keys
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=keys.issuer,
                audience=keys.audience,
                leeway=keys.leeway,
                options={"require": ["exp", "sub"], "verify_aud": keys.audience is not None},
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


def principal_from_claims(claims: dict[str, Any], via: str = "bearer") -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("the token's 'sub' claim must be a string", reason="missing_claim")
    try:
        role = Role(claims.get("role", Role.USER.value))
    except ValueError:
        raise Unauthorized(f"unknown role {claims.get('role')!r}", reason="invalid_claim") from None
    topics = claims.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise Unauthorized("the 'topics' claim must be a list of patterns", reason="invalid_claim")
    for grant in topics:
        # Parsed as the policy will parse it: a bad grant is a bad token (401), not a bad
        # request (422) at whichever route first asks the policy about it.
        try:
            TopicPattern.parse(grant)
        except InvalidInput as exc:
            raise Unauthorized(
                f"the 'topics' claim holds {exc.message}", reason="invalid_claim"
            ) from None
    exp = claims.get("exp")
    expires_at = _timestamp(exp, "exp") if exp is not None else None
    return Principal(subject, role, tuple(topics), expires_at, via=via)


def _timestamp(value: Any, claim: str) -> float:
    """A time claim as a float; PyJWT checks it is a number, not that a float can hold it."""
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):
        raise Unauthorized(f"the {claim!r} claim is not a time", reason="invalid_claim") from None


def _nonce() -> str:
    return secrets.token_urlsafe(12)
