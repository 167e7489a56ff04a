"""OpenAPI 3.1 document generated from the routes themselves, and a Swagger UI page.

Why generated: a hand-written spec drifts. Each REST route is a :class:`DocumentedRoute` carrying
the :class:`Operation` declared next to its handler (``routing.py``: summary, parameters
declared next to their parsers in ``params.py``, the msgspec Struct it answers with, the error
statuses it can return). The document is built from the application's route list at the first
request, with the page size limits of the server that serves it; a route declared without an
Operation gets a minimal entry instead of silently missing. Component schemas come from
``msgspec.json.schema_components`` over the same Structs the handlers encode. OpenAPI 3.1 uses
JSON Schema 2020-12, which is what msgspec emits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .models import RESPONSE_STRUCTS
from .params import PageParam, Param
from .routing import DocumentedRoute, Operation, Router
from .state import StaticFiles, services_of, shared_of

SCHEMA_REF = "#/components/schemas/{name}"
SECURITY_SCHEME = "bearerAuth"
# Swagger UI comes from the ``swagger-ui-py`` wheel (its static files only; the package is never
# imported), so /docs works on a machine without internet access.
SWAGGER_UI_PACKAGE = "swagger_ui"
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js")

_ERROR_TEXT = {
    400: "Invalid parameter or agent id (`invalid_parameter`, `invalid_agent_id`).",
    401: "Missing or invalid bearer token (`unauthorized`).",
    404: "Unknown agent (`agent_not_found`) or agent not connected (`not_connected`).",
    409: "The request conflicts with the current state (e.g. `not_connected`).",
    503: "The database is unavailable (`database_unavailable`); retry later.",
}


def _json_content(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def json_response(description: str, struct: type[msgspec.Struct]) -> dict[str, Any]:
    """A response object whose JSON body is ``struct`` (for ``Operation.extra_responses``)."""
    return {
        "description": description,
        "content": _json_content(SCHEMA_REF.format(name=struct.__name__)),
    }


def _error_response(status: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _ERROR_TEXT.get(status, "Error."),
        "content": _json_content(SCHEMA_REF.format(name="ErrorResponse")),
    }
    if status == 401:
        out["headers"] = {
            "WWW-Authenticate": {
                "description": 'Bearer challenge (RFC 6750), e.g. `Bearer error="invalid_token"`.',
                "schema": {"type": "string"},
            }
        }
    if status == 503:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


def _parameter(param: Param | PageParam, max_page_size: int) -> dict[str, Any]:
    if isinstance(param, PageParam):
        param = param.resolve(max_page_size)
    return param.to_openapi()


def _responses(op: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = dict(op.extra_responses)
    if op.response is not None:
        responses[str(op.status)] = {
            "description": (op.response.__doc__ or "OK").strip().splitlines()[0],
            "content": _json_content(SCHEMA_REF.format(name=op.response.__name__)),
        }
    if op.links:
        for code, response in responses.items():
            if code.startswith("2"):
                responses[code] = {**response, "links": op.links}
    errors = sorted({*op.errors, *([401] if op.secured else [])})
    for status in errors:
        responses[str(status)] = _error_response(status)
    return responses


def _operation_object(name: str, op: Operation, max_page_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": name,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": [_parameter(p, max_page_size) for p in op.params],
        "responses": _responses(op),
    }
    if op.description:
        out["description"] = op.description
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {op.body_media_type: {"schema": op.body}},
        }
    out["security"] = [{SECURITY_SCHEME: []}] if op.secured else []
    return out


def _undocumented(route: Route) -> Operation:
    """What the document says of a route declared without an :class:`Operation`."""
    return Operation(
        route.name.replace("_", " "),
        "Not part of the JSON API; see the project documentation.",
        tags=("other",),
        secured=False,
        extra_responses={"200": {"description": "OK."}},
    )


def _paths(routes: Sequence[BaseRoute], max_page_size: int) -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        op = route.operation if isinstance(route, DocumentedRoute) else _undocumented(route)
        method = op.method.lower()
        if route.methods and op.method not in route.methods:
            method = sorted(m for m in route.methods if m != "HEAD")[0].lower()
        paths.setdefault(route.path, {})[method] = _operation_object(route.name, op, max_page_size)
    return paths


def build_openapi(
    routes: Sequence[BaseRoute], *, version: str, max_page_size: int
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (Starlette routes of the application);
    ``max_page_size`` is the largest ``limit`` the lists accept."""
    structs = list(RESPONSE_STRUCTS)
    for route in routes:  # response types declared by routes outside models.py
        if isinstance(route, DocumentedRoute):
            response = route.operation.response
            if response is not None and response not in structs:
                structs.append(response)
    _, components = msgspec.json.schema_components(structs, ref_template=SCHEMA_REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "opamp-fast REST API",
            "version": version,
            "description": (
                "Agent status of an opamp-fast OpAMP server. Every `/api` route needs "
                "`Authorization: Bearer <JWT>` (mint one with `opamp-fast token`). Errors are "
                '`{"error": {"code", "message"}}`. Times are RFC 3339 UTC.'
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "agents", "description": "Agent status, connections and history."},
            {"name": "health", "description": "Probes and metrics (no authentication)."},
        ],
        "paths": _paths(routes, max_page_size),
        "components": {
            "schemas": components,
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>opamp-fast REST API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/init.js"></script>
</body>
</html>
"""
# A separate file, not an inline script: the page works under a strict Content-Security-Policy.
# validatorUrl null: Swagger UI would otherwise fetch a badge from validator.swagger.io.
_DOCS_INIT = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", persistAuthorization: true, deepLinking: true,
  validatorUrl: null
});
"""


def swagger_ui_assets() -> StaticFiles:
    """The Swagger UI files served under /docs/static, read from the installed wheel."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return {}
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    types = {".css": "text/css", ".js": "text/javascript"}
    assets: StaticFiles = {}
    for name in SWAGGER_UI_FILES:
        path = static / name
        if path.is_file():
            assets[name] = (path.read_bytes(), types[path.suffix])
    assets["init.js"] = (_DOCS_INIT, "text/javascript")
    return assets


router = Router()


@router.page("/openapi.json")
async def openapi_json(request: Request) -> Response:
    shared = shared_of(request)
    if shared.openapi is None:
        services = services_of(request)
        spec = build_openapi(
            request.app.routes,
            version=services.version,
            max_page_size=services.settings.api_max_page_size,
        )
        shared.openapi = msgspec.json.encode(spec)
    return Response(shared.openapi, media_type="application/json")


@router.page("/docs")
async def docs(request: Request) -> Response:
    return HTMLResponse(_DOCS_HTML)


@router.page("/docs/static/{name}")
async def docs_static(request: Request) -> Response:
    files = shared_of(request).swagger_files
    if not files:
        files.update(await anyio.to_thread.run_sync(swagger_ui_assets))
    found = files.get(request.path_params["name"])
    if found is None:
        raise HTTPException(404, "no such file")
    return Response(
        found[0], media_type=found[1], headers={"Cache-Control": "public, max-age=3600"}
    )
