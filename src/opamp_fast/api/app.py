"""The ASGI application: the OpAMP endpoint is dispatched before Starlette's routing.

OpAMP is the hot path (every agent message), so it goes to a plain ASGI callable; REST, docs,
metrics and health probes go through Starlette.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..services import Services
from . import health
from .responses import error_response

ASGIApp = Any


def build_starlette(services: Services) -> Starlette:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    return Starlette(
        routes=[*health.routes(services)],
        exception_handlers={HTTPException: http_error},
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
