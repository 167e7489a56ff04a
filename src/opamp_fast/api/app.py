"""The ASGI application: REST API, docs, metrics and health probes.

OpAMP is the hot path (every agent message) and never comes here: the front reads every
request on the port and serves the OpAMP path natively, on any connection. Everything under
``/api`` needs a bearer JWT
(``api.auth.BearerAuthMiddleware``); probes, metrics, ``/openapi.json`` and ``/docs`` do not.

To add routes, declare them on their module's router (``routing.Router``) and list the module
in :func:`build_starlette`; the OpenAPI document is generated from the app's route list, so new
routes are described automatically. Handlers reach the services and what the app shares
through the request (``state.services_of``, ``state.shared_of``).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from ..auth import TokenVerifier
from ..services import Services
from . import (
    agents,
    assignments,
    audit,
    availability,
    commands,
    configs,
    connection_settings,
    events,
    groups,
    health,
    lifecycle,
    openapi,
    packages,
    ui,
)
from .auth import BearerAuthMiddleware
from .errors import EXCEPTION_HANDLERS
from .routing import settle_routes
from .state import Shared

ASGIApp = Any


def build_starlette(services: Services) -> Starlette:
    """The Starlette app. Raises ``ConfigError`` when the REST API's JWT keys are misconfigured."""
    verifier = TokenVerifier.from_settings(services.settings)
    health.exporter_of(services)
    routes: list[Route] = [
        *health.router.routes(),
        *agents.router.routes(),
        *lifecycle.router.routes(),
        *availability.router.routes(),
        # Without a package registry there are no package routes at all.
        *(packages.router.routes() if services.packages is not None else ()),
        *assignments.router.routes(),
        *configs.router.routes(),
        *groups.router.routes(),
        *connection_settings.router.routes(),
        *commands.agent_router.routes(),
        *commands.group_router.routes(),
        *audit.router.routes(),
        *events.router.routes(),
        *ui.router.routes(),
        *openapi.router.routes(),
        *health.metrics_router.routes(),
    ]
    settle_routes(routes)
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuthMiddleware, verifier=verifier, prefix="/api")],
        exception_handlers={**EXCEPTION_HANDLERS, **audit.EXCEPTION_HANDLERS},  # type: ignore[dict-item]
    )
    app.state.services = services
    app.state.shared = Shared.for_settings(services.settings)
    return app


def build_app(services: Services) -> ASGIApp:
    return build_starlette(services)
