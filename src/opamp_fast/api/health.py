"""Liveness (process up) and readiness (database reachable and migrated) probes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..services import Services
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
