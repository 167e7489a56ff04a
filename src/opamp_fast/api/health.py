"""What machines poll: liveness (process up), readiness (database reachable and migrated) and
``GET /metrics`` (Prometheus; unauthenticated, as Prometheus scrapes)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..observability.metrics import CONTENT_TYPE, MetricsExporter
from ..services import Services, metrics_exporter
from .responses import JSONResponse
from .routing import Operation, Router
from .state import services_of

# The probes are matched first and /metrics last (it is listed last in the document too).
router = Router(tags=("health",))
metrics_router = Router(tags=("health",))

_ALIVE = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "version": {"type": "string"}},
    "required": ["status", "version"],
}


@router.get(
    "/healthz",
    Operation(
        "Liveness probe",
        "200 while the process runs. No authentication.",
        secured=False,
        extra_responses={
            "200": {"description": "Alive.", "content": {"application/json": {"schema": _ALIVE}}}
        },
    ),
)
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": services_of(request).version})


@router.get(
    "/readyz",
    Operation(
        "Readiness probe",
        "200 when the database is reachable and migrated, else 503 with the problems.",
        secured=False,
        extra_responses={
            "200": {"description": "Ready.", "content": {"application/json": {"schema": {}}}},
            "503": {"description": "Not ready.", "content": {"application/json": {"schema": {}}}},
        },
    ),
)
async def readyz(request: Request) -> Response:
    services = services_of(request)
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


def exporter_of(services: Services) -> MetricsExporter:
    """This server's exporter. Services built by hand (e.g. API tests) get their own, made by
    ``build_starlette`` so that it sees everything from the app's start."""
    if services.metrics is None:
        services.metrics = metrics_exporter(services)
    return services.metrics


@metrics_router.get(
    "/metrics",
    Operation(
        "Prometheus metrics",
        "Prometheus text exposition format. No authentication.",
        secured=False,
        extra_responses={
            "200": {
                "description": "Metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
)
async def metrics(request: Request) -> Response:
    """This server's exporter (every worker's, labelled, with --workers)."""
    services = services_of(request)
    if services.metrics_share is not None:
        body = await services.metrics_share.scrape()
    else:
        body = await exporter_of(services).render()
    return Response(body, media_type=CONTENT_TYPE)
