"""The web dashboard at ``/`` and the JavaScript client at ``/static/jobcast.js``.

The files live in ``static/`` inside the package, so an installed jobcast serves exactly the
files in the repository; there is no build step. Only the files listed here are served, and
none of these routes appear in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from jobcast.errors import NotFound
from jobcast.server.http.errors import jobcast_router

STATIC_DIR = Path(__file__).parent.parent / "static"

#: Served files and their media types.
FILES = {
    "jobcast.js": "text/javascript; charset=utf-8",
    "jobcast.d.ts": "text/plain; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "input_form.js": "text/javascript; charset=utf-8",
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


def static_router(
    directory: Path,
    files: Mapping[str, str],
    *,
    prefix: str,
    csp: str,
    index_headers: Mapping[str, str] | None = None,
    index: bool = True,
) -> APIRouter:
    """``/`` (``index.html`` with ``csp``; unless ``index`` is false) and ``{prefix}/{name}``
    for the listed ``files``.

    ``files`` maps each servable path below ``directory`` to its media type; nothing else is
    ever served, so no request path reaches the filesystem. For jobcast's dashboard and for
    an application's own page (the examples use it for theirs).
    """
    router = jobcast_router(include_in_schema=False)
    page_headers = {**_HEADERS, "Content-Security-Policy": csp, **(index_headers or {})}

    async def index_page() -> FileResponse:
        return FileResponse(
            directory / "index.html", media_type="text/html; charset=utf-8", headers=page_headers
        )

    if index:
        router.get("/")(index_page)

    @router.get(prefix + "/{name:path}")
    async def static_file(name: str) -> FileResponse:
        media_type = files.get(name)
        if media_type is None:
            raise NotFound(f"no file {name!r}")
        return FileResponse(directory / name, media_type=media_type, headers=_HEADERS)

    return router


def dashboard_router(*, page: bool = True) -> APIRouter:
    """The dashboard's page at ``/`` (with ``page``) and the files below ``/static/``, among
    them the JavaScript client, which applications' own pages use."""
    return static_router(
        STATIC_DIR,
        FILES,
        prefix="/static",
        csp=CSP,
        index_headers={"Referrer-Policy": "no-referrer"},
        index=page,
    )
