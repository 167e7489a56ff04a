"""What machines poll: liveness (process up), readiness (database reachable and migrated) and
``GET /metrics`` (Prometheus; unauthenticated, as Prometheus scrapes)."""

from __future__ import annotations

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..observability.metrics import CONTENT_TYPE
from ..services import Services, metrics_exporter
from .responses import JSONResponse


def routes(services: Services) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": services.version})

    async def readyz(request: Request) -> Response:
        problems = []
        if services.shutdown.is_set():
            problems.append("shutting down")
        if not services.db.migrated:
            problems.append("migrations not applied")
        elif not await services.db.ping():
            problems.append("database unreachable")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, 503)
        return JSONResponse({"status": "ready"})

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


def metrics_routes(services: Services) -> list[Route]:
    """``GET /metrics`` for this server's exporter (every worker's, labelled, with --workers)."""
    exporter = services.metrics
    if exporter is None:  # Services built by hand (e.g. API tests): give them their own
        exporter = services.metrics = metrics_exporter(services)
    share = services.metrics_share

    async def metrics(request: Request) -> Response:
        if share is not None:
            body = await anyio.to_thread.run_sync(share.merged)
        else:
            body = await exporter.render()
        return Response(body, media_type=CONTENT_TYPE)

    return [Route("/metrics", metrics, methods=["GET"])]
