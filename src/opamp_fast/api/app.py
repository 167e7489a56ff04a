"""The ASGI application: the OpAMP endpoint is dispatched before Starlette's routing.

OpAMP is the hot path (every agent message), so it goes to a plain ASGI callable; REST, docs,
metrics and health probes go through Starlette. Everything under ``/api`` needs a bearer JWT
(``auth.BearerAuthMiddleware``); probes, metrics, ``/openapi.json`` and ``/docs`` do not.

To add routes, add them to the ``routes`` list in :func:`build_starlette`; the OpenAPI document
is generated from that list, so new routes are described automatically.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware

from .. import metrics
from ..auth import BearerAuthMiddleware, TokenVerifier
from ..services import Services
from . import agents, health, openapi
from .errors import EXCEPTION_HANDLERS

ASGIApp = Any


def build_starlette(services: Services) -> Starlette:
    """The Starlette app. Raises ``ConfigError`` when the REST API's JWT keys are misconfigured."""
    verifier = TokenVerifier.from_settings(services.settings)
    counts = agents.StatusCountCache(services.db.run)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A nursery for background work of request handlers (count refreshes) that must not
        # hold up the request that triggered it.
        async with trio.open_nursery() as nursery:
            counts.nursery = nursery
            try:
                yield
            finally:
                counts.nursery = None
                nursery.cancel_scope.cancel()

    routes = [
        *health.routes(services),
        *agents.routes(services, counts),
        *openapi.routes(services),
        *metrics.routes(services),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuthMiddleware, verifier=verifier, prefix="/api")],
        exception_handlers=dict(EXCEPTION_HANDLERS),  # type: ignore[arg-type]
        lifespan=lifespan,
    )


def build_app(services: Services) -> ASGIApp:
    rest = build_starlette(services)
    opamp = services.opamp
    path = services.settings.opamp_path

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" and scope["path"] == path:
            await opamp(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return app
