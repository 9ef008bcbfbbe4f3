"""jobcast's plumbing on jobcast's paths only, so that an application embedding it keeps its own.

An application that installs jobcast into its FastAPI app has its own error format, body limits,
CORS and request ids, and its own ``/`` and ``/health``. jobcast's middlewares (the fast
entrance, request ids, CORS, body limits) therefore run as one chain in front of jobcast's own
routes only (:class:`ForOwnPaths`); every other request goes straight to the application.
Which paths are jobcast's is read from its routes (:class:`OwnPaths`), so the list is never
written twice. Route conflicts are refused (:func:`conflicts`): a jobcast route and one of the
application's with the same path and method would silently shadow one another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from starlette.routing import BaseRoute, Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

_SEGMENT = re.compile(r"\{[^}]*\}")


def _path(route: BaseRoute) -> str | None:
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _methods(route: BaseRoute) -> frozenset[str]:
    if isinstance(route, WebSocketRoute):
        return frozenset({"WEBSOCKET"})
    methods = getattr(route, "methods", None)
    return frozenset(methods or ())


class OwnPaths:
    """The request paths that jobcast's routes (mounted under ``prefix``) answer."""

    def __init__(self, routes: Iterable[BaseRoute], prefix: str) -> None:
        exact: set[str] = set()
        below: set[str] = set()
        for route in routes:
            path = _path(route)
            if path is None:
                continue
            static, brace, _ = path.partition("{")
            if brace:
                below.add(prefix + static)  # "/api/jobs/{job_id}": anything below /api/jobs/
            else:
                exact.add(prefix + path)
        self.exact = frozenset(exact)
        self.below = tuple(sorted(below))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self.exact or path.startswith(self.below))


class ForOwnPaths:
    """ASGI: ``chain`` (jobcast's middlewares around the application) for jobcast's paths, the
    application alone for every other request; with ``paths=None``, the chain for every path."""

    def __init__(
        self, app: ASGIApp, *, paths: OwnPaths | None, chain: Callable[[ASGIApp], ASGIApp]
    ) -> None:
        self.app = app
        self.paths = paths
        self.chained = chain(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        paths = self.paths
        if paths is None or (
            scope["type"] in ("http", "websocket") and _route_path(scope) in paths
        ):
            await self.chained(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a server or a mount put in front."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def conflicts(
    ours: Sequence[BaseRoute], routers: Sequence[object], routes: Iterable[BaseRoute], prefix: str
) -> list[str]:
    """``METHOD path`` of each of ``ours`` (leaf routes, mounted under ``prefix`` through
    ``routers``) that another of ``routes`` (an application's, in order) also answers.

    Routes are asked whether they match a request for each of our paths, as the router itself
    would ask them, so an application's included routers are looked into however the framework
    keeps them."""
    endpoints = {getattr(route, "endpoint", None) for route in ours} - {None}
    mine = {id(router) for router in routers} | {id(route) for route in ours}
    others = [
        route
        for route in routes
        if id(route) not in mine
        and id(getattr(route, "original_router", None)) not in mine
        and getattr(route, "endpoint", None) not in endpoints
    ]
    found: list[str] = []
    for route in ours:
        path = _path(route)
        if path is None:
            continue
        sample = _SEGMENT.sub("x", prefix + path)
        for method in sorted(_methods(route) - {"HEAD"}):
            scope: dict[str, object] = {"path": sample, "root_path": "", "path_params": {}}
            if method == "WEBSOCKET":
                scope["type"] = "websocket"
            else:
                scope.update(type="http", method=method)
            if any(other.matches(scope)[0] is Match.FULL for other in others):
                found.append(f"{method} {prefix + path}")
    return found


def describe(found: list[str], prefix: str) -> str:
    listed = ", ".join(found)
    return (
        f"jobcast's routes {listed} are also routes of this application, and one would shadow "
        f"the other: install jobcast under a prefix (install(app, prefix='/jobcast')), or leave "
        f"out its service routes or dashboard page (service_routes=False, dashboard=False)"
        + (f" (prefix now {prefix!r})" if prefix else "")
    )


def chain_of(*layers: Callable[[ASGIApp], ASGIApp]) -> Callable[[ASGIApp], ASGIApp]:
    """One chain from ``layers``, innermost first."""

    def build(app: ASGIApp) -> ASGIApp:
        for layer in layers:
            app = layer(app)
        return app

    return build
