"""The React front end, served from ``static/`` with no build step (React's UMD files are
vendored; ``vendor.sh`` refreshes them from npm)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from jobcast.server.routes.dashboard import static_router

STATIC = Path(__file__).parent / "static"
FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "vendor/react.production.min.js": "text/javascript; charset=utf-8",
    "vendor/react-dom.production.min.js": "text/javascript; charset=utf-8",
}
#: Nothing from elsewhere, no inline script; connect-src covers the WebSocket.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def frontend_router() -> APIRouter:
    return static_router(STATIC, FILES, prefix="/app", csp=CSP)
