"""The dashboard page, served from ``static/``; it is built on jobcast's ``/static/jobcast.js``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from jobcast import NotFound

STATIC = Path(__file__).parent / "static"
FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def dashboard_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        headers = {**HEADERS, "Content-Security-Policy": CSP}
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=headers)

    @router.get("/app/{name}")
    async def asset(name: str) -> FileResponse:
        media_type = FILES.get(name)
        if media_type is None:  # only the listed files: no path ever reaches the filesystem
            raise NotFound(f"no file {name!r}")
        return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)

    return router
