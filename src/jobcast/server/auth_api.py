"""``/api/auth``: stream tickets and cookie sessions, exchanged for a bearer token."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

import secrets
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from jobcast.auth import Principal
from jobcast.errors import Forbidden, Unauthorized
from jobcast.server.credentials import CSRF_COOKIE, SESSION_COOKIE
from jobcast.topics import parse_patterns

if TYPE_CHECKING:
    from jobcast.server.app import Jobcast


class TicketRequest(BaseModel):
    topics: list[str] = Field(
        description="Topics or patterns the ticket may open; a job's stream is `jobs/{id}`."
    )


class Ticket(BaseModel):
    ticket: str
    expires_in: int


class Session(BaseModel):
    subject: str
    role: str
    csrf_token: str = Field(description="Send it back as `X-CSRF-Token` on POST and DELETE.")
    expires_in: int


def auth_router(jc: "Jobcast") -> APIRouter:
    router = APIRouter(prefix="/api/auth", tags=["auth"])
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
        ttl = jc.settings.ticket_ttl_seconds
        value = jc.tokens.mint_ticket(holder, [p.text for p in patterns], ttl)
        return Ticket(ticket=value, expires_in=int(ttl))

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
        ttl = settings.session_ttl_seconds
        csrf = secrets.token_urlsafe(24)
        cookie = {"secure": settings.session_cookie_secure, "samesite": "lax", "path": "/"}
        response.set_cookie(
            SESSION_COOKIE,
            jc.tokens.mint_session(holder, ttl),
            max_age=int(ttl),
            httponly=True,
            **cookie,  # type: ignore[arg-type]
        )
        response.set_cookie(CSRF_COOKIE, csrf, max_age=int(ttl), **cookie)  # type: ignore[arg-type]
        response.headers["X-CSRF-Token"] = csrf
        return Session(
            subject=holder.subject, role=holder.role, csrf_token=csrf, expires_in=int(ttl)
        )

    @router.delete("/session", status_code=204, summary="Log out: clear the session cookie")
    async def logout(response: Response, principal: principal_dep) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")
        response.delete_cookie(CSRF_COOKIE, path="/")

    return router
