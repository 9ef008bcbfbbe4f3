"""Who is calling: one resolution for HTTP requests and WebSocket handshakes.

Order: ``Authorization: Bearer``, then ``?ticket=`` (a one-use stream ticket), then ``?token=``
(kept for ``EventSource``; tokens in URLs end up in logs, so prefer tickets), then the session
cookie. A cookie is the only credential a browser sends by itself, so only cookie-authenticated
requests are subject to the CSRF check (see ``browser.py``).

C1. A session cookie that does not verify (expired, signed by a rotated secret, garbage) makes
    the request anonymous instead of failing it: a browser sends the cookie by itself, so a
    stale one would otherwise lock it out of everything that needs no credential (public
    topics). Where a credential is needed, the refusal gives the cookie's own reason (say
    ``token_expired``) instead of ``missing_token``, so the client knows to sign in again.
    A bearer token, ticket or ``?token=`` that does not verify still fails the request: the
    client chose to send it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.requests import HTTPConnection

from jobcast.auth import Principal, TokenAuthority
from jobcast.config import Settings
from jobcast.errors import JobcastError, Unauthorized
from jobcast.server.http.browser import check_csrf
from jobcast.server.ops.shared_state import SpentTickets

SESSION_COOKIE = "jobcast_session"
CSRF_COOKIE = "jobcast_csrf"
CSRF_HEADER = "x-csrf-token"
#: The scope key under which a session cookie that did not verify is kept (C1).
STALE_SESSION = "jobcast.stale_session"


class Unresolved:
    """A caller ``Credentials.resolve_known`` cannot tell without waiting."""


UNRESOLVED = Unresolved()


class Credentials:
    """Resolves who is calling, for every route, stream and socket."""

    def __init__(
        self, settings: Settings, tokens: Callable[[], TokenAuthority], spent: SpentTickets
    ) -> None:
        self.settings = settings
        #: The token authority, created on first use (it reads or makes the secret file).
        self.tokens = tokens
        self.spent_tickets = spent

    async def resolve(self, connection: HTTPConnection) -> Principal | None:
        """The caller of ``connection``, or ``None`` when it carries no credential at all."""
        return await resolve_principal(self, connection)

    def resolve_known(self, connection: HTTPConnection) -> Principal | Unresolved | None:
        """The caller, when it is known without waiting: a bearer token verified in the last
        minute, or ``None`` for a request with no credential at all; else :data:`UNRESOLVED`
        (``resolve`` knows every other case, and every refusal)."""
        header = connection.headers.get("authorization")
        if header is None:
            scope = connection.scope
            if scope["query_string"] or any(name == b"cookie" for name, _ in scope["headers"]):
                return UNRESOLVED  # perhaps a ticket, a token or a session: resolve's
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return UNRESOLVED
        principal = self.tokens().verified(value.strip())
        return UNRESOLVED if principal is None else principal


async def resolve_principal(
    credentials: Credentials, connection: HTTPConnection
) -> Principal | None:
    """The caller of ``connection``, or ``None`` when it carries no credential at all."""
    tokens, settings = credentials.tokens(), credentials.settings
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("use 'Authorization: Bearer <token>'", reason="malformed_header")
        return await tokens.verify(value.strip())
    query = connection.query_params
    ticket = query.get("ticket")
    if ticket is not None:
        principal, ticket_id, expires_at = tokens.verify_ticket(ticket)
        # Verification accepts a ticket up to the leeway past its exp: remember it that long.
        usable_until = expires_at + settings.jwt_leeway_seconds
        if not await credentials.spent_tickets.spend(ticket_id, usable_until):
            raise Unauthorized("the ticket was already used", reason="ticket_used")
        return principal
    token = query.get("token")
    if token is not None:
        return await tokens.verify(token, via="query")
    session = connection.cookies.get(SESSION_COOKIE)
    if session is not None:
        try:
            principal = tokens.verify_session(session)
        except Unauthorized as exc:  # C1
            connection.scope[STALE_SESSION] = exc
            return None
        check_csrf(settings, connection)
        return principal
    return None


def explain_refusal(exc: JobcastError, scope: MutableMapping[str, Any]) -> JobcastError:
    """``exc``, or, when it says a credential is missing and the request came with a session
    cookie that did not verify, why the cookie did not count (C1)."""
    if isinstance(exc, Unauthorized) and exc.reason == "missing_token":
        stale: JobcastError = scope.get(STALE_SESSION, exc)
        return stale
    return exc


def stream_owner(principal: Principal | None) -> dict[str, Any]:
    """The ``owner`` and ``expires_at`` arguments of ``Hub.subscribe`` for ``principal``.

    Refuses a credential already past its expiry: verification tolerates clock skew
    (``jwt_leeway_seconds``), but a stream opened with such a credential would end with
    ``reauth`` at the hub's next tick, and a client that reconnected with it would loop until
    the leeway ran out. A 401 ``token_expired`` tells it to renew first.
    """
    if principal is None:
        return {}
    if principal.expires_at is not None and principal.expires_at <= time.time():
        raise Unauthorized(
            "the credential has expired; renew it before opening a stream",
            reason="token_expired",
        )
    return {"owner": principal.subject, "expires_at": principal.expires_at}
