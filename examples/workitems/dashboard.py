"""The dashboard page, served from ``static/``; it is built on jobcast's ``/static/jobcast.js``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from jobcast.server.routes.dashboard import static_router

STATIC = Path(__file__).parent / "static"
FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def dashboard_router() -> APIRouter:
    return static_router(STATIC, FILES, prefix="/app", csp=CSP)
