"""Mounting jobcast into an application: its routes, and its plumbing on its own paths.

Decisions (cited as M1..M4):

M1. No side effects on the host. ``install`` adds jobcast's routes (under ``prefix``, if given)
    and one middleware that runs jobcast's plumbing (the fast entrance, request ids, CORS, body
    limits) for jobcast's paths only (``http/own_paths.py``); jobcast's routes answer their own
    errors (``http/errors.JobcastRoute``). The application keeps its exception handlers, body
    limits, CORS, ``/`` and ``/health``.
M2. No shadowing. A jobcast route and one of the application's with the same path and method
    are refused with a clear message, at ``install`` and again when the lifespan starts (routes
    the application added after ``install``). The application may leave out jobcast's
    dashboard page (``/``; the JavaScript client under ``/static/`` stays) or service routes
    (``/health``, ``/ready``, ``/metrics``), or use a prefix.
M3. Apps built around jobcast (the standalone server, the examples) may ask for the plumbing on
    every path (``app_wide=True``): JSON errors for their own routes too, body limits (except on
    ``upload_paths``, which stream their own), CORS and request ids everywhere.
M4. Middleware order. jobcast's middleware is added by ``install``; the application's
    middleware added after ``install`` runs before it on every request; middleware added before
    ``install`` sees jobcast's requests only when the fast entrance leaves them to the
    framework (anything but an open stream, a socket or a plain publish). Without the fast
    entrance (``fast_entrance=False``), every request goes through the framework and all of
    the application's middleware, at the cost the entrance exists to avoid (entrance.F1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from jobcast.server.http.browser import cors_layer
from jobcast.server.http.errors import install_error_handlers
from jobcast.server.http.limits import BodyLimitMiddleware
from jobcast.server.http.own_paths import ForOwnPaths, OwnPaths, chain_of, conflicts, describe
from jobcast.server.http.request_id import RequestIdMiddleware
from jobcast.server.routes.auth import auth_router
from jobcast.server.routes.batches import batches_router
from jobcast.server.routes.dashboard import dashboard_router
from jobcast.server.routes.durable_streams import durable_streams_router
from jobcast.server.routes.events import events_router
from jobcast.server.routes.job_inputs import job_inputs_router
from jobcast.server.routes.job_lists import job_lists_router
from jobcast.server.routes.job_reports import job_reports_router
from jobcast.server.routes.jobs import jobs_router
from jobcast.server.routes.metrics import metrics_router
from jobcast.server.routes.service import service_router
from jobcast.server.routes.sockets import ws_router
from jobcast.server.runtime import Runtime
from jobcast.server.serving.entrance import FastPaths
from jobcast.server.serving.head import HeadAsGet


class RouteConflict(ValueError):
    """A jobcast route and one of the application's would shadow one another (M2)."""


def routers(
    runtime: Runtime, *, dashboard: bool = True, service_routes: bool = True
) -> list[APIRouter]:
    """jobcast's routers, one per resource; each holds its routes itself (no nesting)."""
    found = [
        auth_router(runtime),
        events_router(runtime),
        job_lists_router(runtime),  # before jobs_router: /api/jobs/live is no job id
        jobs_router(runtime),
        job_inputs_router(runtime),
        batches_router(runtime),
        job_reports_router(runtime),  # queue workers reporting over HTTP
        ws_router(runtime),
    ]
    found.append(durable_streams_router(runtime))
    if service_routes:
        found += [metrics_router(runtime.metrics), service_router(runtime)]
    found.append(dashboard_router(page=dashboard))  # /static/jobcast.js in any case
    return found


def routes(runtime: Runtime) -> APIRouter:
    """Every jobcast route, as one router."""
    router = APIRouter()
    for part in routers(runtime):
        router.include_router(part)
    return router


class Mounted:
    """jobcast's routes in one application, remembered to check again at start (M2)."""

    def __init__(self, app: FastAPI, parts: list[APIRouter], prefix: str) -> None:
        self.app = app
        self.parts = parts
        self.routes: list[BaseRoute] = [route for part in parts for route in part.routes]
        self.prefix = prefix

    def check(self) -> None:
        found = conflicts(self.routes, self.parts, self.app.routes, self.prefix)
        if found:
            raise RouteConflict(describe(found, self.prefix))


def install(
    app: FastAPI,
    runtime: Runtime,
    *,
    prefix: str = "",
    app_wide: bool = False,
    upload_paths: Sequence[str] = (),
    dashboard: bool = True,
    service_routes: bool = True,
    fast_entrance: bool = True,
) -> Mounted:
    """Mount jobcast into ``app`` (M1-M4)."""
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"a prefix starts with '/': {prefix!r}")
    parts = routers(runtime, dashboard=dashboard, service_routes=service_routes)
    mounted = Mounted(app, parts, prefix)
    mounted.check()
    for part in parts:
        app.include_router(part, prefix=prefix)
    settings = runtime.settings
    cors = cors_layer(settings)

    def body_limits(inner: ASGIApp) -> ASGIApp:
        return BodyLimitMiddleware(
            inner,
            max_bytes=settings.max_body_bytes,
            # Job submission and upload routes enforce their own (upload) limits.
            exempt_prefixes=(prefix + "/api/jobs", *upload_paths),
        )

    layers: list[Callable[[ASGIApp], ASGIApp]] = [
        lambda inner: HeadAsGet(inner, prefix),  # HEAD on GET routes, streams excepted
        body_limits,
        *([cors] if cors is not None else []),
    ]
    layers.append(RequestIdMiddleware)
    if fast_entrance:
        layers.append(lambda inner: FastPaths(inner, runtime, prefix))
    chain = chain_of(*layers)  # innermost first: the entrance is outermost (entrance.F1)
    if app_wide:  # M3
        install_error_handlers(app)
    paths = None if app_wide else OwnPaths(mounted.routes, prefix)
    app.add_middleware(ForOwnPaths, paths=paths, chain=chain)
    return mounted
