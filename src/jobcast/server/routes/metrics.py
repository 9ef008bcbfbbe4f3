"""``GET /metrics``: every process's metrics in the Prometheus text format (``ops/metrics.py``)."""

# No ``from __future__ import annotations``: FastAPI reads these signatures at runtime.

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from jobcast.server.http.errors import jobcast_router
from jobcast.server.ops.metrics import Metrics


def metrics_router(registry: Metrics) -> APIRouter:
    router = jobcast_router(tags=["service"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(await registry.render(), media_type=CONTENT_TYPE_LATEST)

    return router
