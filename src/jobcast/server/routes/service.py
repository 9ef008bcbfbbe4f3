"""``/health`` and ``/ready``: what a process manager and a load balancer ask."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from jobcast._version import __version__
from jobcast.server.http.errors import jobcast_router

if TYPE_CHECKING:
    from jobcast.server.runtime import Runtime


def service_router(jc: "Runtime") -> APIRouter:
    router = jobcast_router(tags=["service"])

    @router.get("/health", summary="Liveness and connection count")
    async def health() -> dict[str, Any]:
        hub = jc.hub
        return {
            "status": "draining" if hub.draining else "ok",
            "version": __version__,
            "connected_clients": hub.subscriber_count,
            "epoch": hub.broker.epoch,
        }

    @router.get(
        "/ready",
        summary="Readiness: 503 once the server drains, so a load balancer stops routing here",
        responses={503: {"description": "Draining or not started"}},
    )
    async def ready() -> JSONResponse:
        hub = jc.running_hub
        if hub is None or hub.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        return JSONResponse({"ready": True})

    return router
