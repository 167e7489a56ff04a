"""The ASGI application: REST API, docs, metrics and health probes.

OpAMP is the hot path (every agent message) and never comes here: the front reads every
request on the port and serves the OpAMP path natively, on any connection. Everything under
``/api`` needs a bearer JWT
(``api.auth.BearerAuthMiddleware``); probes, metrics, ``/openapi.json`` and ``/docs`` do not.

To add routes, add them to the ``routes`` list in :func:`build_starlette`; the OpenAPI document
is generated from that list, so new routes are described automatically.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from ..auth import TokenVerifier
from ..services import Services
from . import (
    agents,
    assignments,
    audit,
    configs,
    events,
    groups,
    health,
    openapi,
    packages,
    ui,
)
from .auth import BearerAuthMiddleware
from .errors import EXCEPTION_HANDLERS

ASGIApp = Any


def build_starlette(services: Services) -> Starlette:
    """The Starlette app. Raises ``ConfigError`` when the REST API's JWT keys are misconfigured."""
    verifier = TokenVerifier.from_settings(services.settings)
    routes = [
        *health.routes(services),
        *agents.routes(services),
        *packages.routes(services),
        *assignments.routes(services),
        *configs.routes(services),
        *groups.routes(services),
        *audit.routes(services),
        *events.routes(services),
        *ui.routes(services),
        *openapi.routes(services),
        *health.metrics_routes(services),
    ]
    openapi.settle_routes(routes)
    return Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuthMiddleware, verifier=verifier, prefix="/api")],
        exception_handlers={**EXCEPTION_HANDLERS, **audit.exception_handlers(services)},  # type: ignore[dict-item]
    )


def build_app(services: Services) -> ASGIApp:
    return build_starlette(services)
