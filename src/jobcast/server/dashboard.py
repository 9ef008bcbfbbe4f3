"""The web dashboard at ``/`` and the JavaScript client at ``/static/jobcast.js``.

The files live in ``static/`` inside the package, so an installed jobcast serves exactly the
files in the repository; there is no build step. Only the files listed here are served, and
none of these routes appear in the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from jobcast.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"

#: Served files and their media types.
FILES = {
    "jobcast.js": "text/javascript; charset=utf-8",
    "jobcast.d.ts": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

#: The dashboard loads nothing from elsewhere and runs no inline script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# Revalidate every time (cheap: FileResponse answers with an ETag), so a new version is seen
# at once after an upgrade.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def dashboard_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def dashboard() -> FileResponse:
        headers = {**_HEADERS, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
        return FileResponse(
            STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=headers
        )

    @router.get("/static/{name}")
    async def static_file(name: str) -> FileResponse:
        media_type = FILES.get(name)
        if media_type is None:
            raise NotFound(f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)

    return router
