"""``/api/auth``: stream tickets and cookie sessions, exchanged for a bearer token."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import contextlib
import secrets
import time
from typing import TYPE_CHECKING, Annotated

import jwt
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from jobcast.auth import Principal
from jobcast.errors import Forbidden, Unauthorized
from jobcast.server.http.credentials import CSRF_COOKIE, SESSION_COOKIE
from jobcast.server.http.errors import jobcast_router
from jobcast.topics import parse_patterns

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


class TicketRequest(BaseModel):
    topics: list[str] = Field(
        description="Topics or patterns the ticket may open; a job's stream is `jobs/{id}`."
    )


#: A ticket or session never outlives the token it was issued from.
LIFETIME_DOC = "Seconds it lives: the configured TTL, or less when the token it came from expires."


class Ticket(BaseModel):
    ticket: str
    expires_in: int = Field(description=LIFETIME_DOC)


class Session(BaseModel):
    subject: str
    role: str
    csrf_token: str = Field(description="Send it back as `X-CSRF-Token` on POST and DELETE.")
    expires_in: int = Field(description=LIFETIME_DOC)


def lifetime(token: str, ttl: float, minted_after: float) -> int:
    """Whole seconds a ticket or session minted at ``minted_after`` or later lives: until its
    own ``exp``, which minting caps at the expiry of the credential it came from, so it can be
    far less than ``ttl``. (Read back from the token, the one place that rule is applied.)"""
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    return max(0, min(int(ttl), int(expires - minted_after)))


def auth_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(prefix="/api/auth", tags=["auth"])
    principal_dep = Annotated[Principal | None, Depends(jc.principal)]

    def require_bearer(principal: Principal | None) -> Principal:
        if principal is None:
            raise Unauthorized("this needs a bearer token", reason="missing_token")
        if principal.ticket_topics is not None:
            raise Forbidden("a stream ticket cannot be exchanged for anything else")
        return principal

    @router.post(
        "/ticket",
        response_model=Ticket,
        summary="Exchange a bearer token for a one-use, short-lived stream ticket",
        description="Use it as `?ticket=` on an SSE or WebSocket URL instead of `?token=`, so "
        "long-lived tokens never appear in URLs or access logs.",
    )
    async def ticket(body: TicketRequest, request: Request, principal: principal_dep) -> Ticket:
        holder = require_bearer(principal)
        await jc.limiter.hit("ticket", holder, request)
        patterns = parse_patterns(body.topics, limit=jc.settings.max_topics_per_subscription)
        jc.policy.subscription_filter(holder, patterns)  # refuse now what the stream would
        ttl, now = jc.settings.ticket_ttl_seconds, time.time()
        value = jc.tokens.mint_ticket(holder, [p.text for p in patterns], ttl)
        return Ticket(ticket=value, expires_in=lifetime(value, ttl, now))

    @router.post(
        "/session",
        response_model=Session,
        summary="Log in a browser: set an HttpOnly session cookie from a bearer token",
    )
    async def login(request: Request, response: Response, principal: principal_dep) -> Session:
        holder = require_bearer(principal)
        if holder.via == "cookie":
            raise Forbidden("log in with a bearer token, not with the session itself")
        await jc.limiter.hit("ticket", holder, request)
        settings = jc.settings
        ttl, now = settings.session_ttl_seconds, time.time()
        session = jc.tokens.mint_session(holder, ttl)
        seconds = lifetime(session, ttl, now)
        csrf = secrets.token_urlsafe(24)
        cookie = {"secure": settings.session_cookie_secure, "samesite": "lax", "path": "/"}
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=seconds,
            httponly=True,
            **cookie,  # type: ignore[arg-type]
        )
        response.set_cookie(CSRF_COOKIE, csrf, max_age=seconds, **cookie)  # type: ignore[arg-type]
        response.headers["X-CSRF-Token"] = csrf
        return Session(
            subject=holder.subject, role=holder.role, csrf_token=csrf, expires_in=seconds
        )

    @router.delete("/session", status_code=204, summary="Log out: clear the session cookie")
    async def logout(request: Request, response: Response) -> None:
        # A live session must still bring its CSRF proof (a Forbidden goes through), but one
        # that expired or does not verify is exactly what logging out must be able to clear.
        with contextlib.suppress(Unauthorized):
            await jc.credentials.resolve(request)
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

    return router
