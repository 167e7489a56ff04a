"""OpenAPI 3.1 document generated from the routes themselves, and a Swagger UI page.

Why generated: a hand-written spec drifts. Each REST route is a :class:`DocumentedRoute` carrying
its :class:`Operation` (summary, parameters declared next to their parsers in ``params.py``,
the msgspec Struct it answers with, the error statuses it can return). The document is built
from the application's route list at the first request, so any route added later (metrics, ...)
appears too: undocumented routes get a minimal entry instead of silently missing. Component
schemas come from ``msgspec.json.schema_components`` over the same Structs the handlers encode.
OpenAPI 3.1 uses JSON Schema 2020-12, which is what msgspec emits.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from ..services import Services
from .models import RESPONSE_STRUCTS
from .params import Param

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


@dataclass(frozen=True, slots=True)
class Operation:
    """OpenAPI metadata of one route (GET unless ``method`` says otherwise)."""

    summary: str
    description: str = ""
    params: Sequence[Param] = ()
    response: type[msgspec.Struct] | None = None
    errors: Sequence[int] = ()
    tags: Sequence[str] = ("agents",)
    secured: bool = True
    method: str = "GET"
    status: int = 200  # the success status of ``response``
    extra_responses: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # the JSON Schema of the (required) request body
    body_media_type: str = "application/json"
    # OpenAPI links of the success responses: the operations that read, change or remove what
    # this one answered with (see :func:`links`).
    links: dict[str, Any] = field(default_factory=dict)


class DocumentedRoute(Route):
    """A Starlette route that carries its OpenAPI :class:`Operation`.

    Several routes may share a path (one per method); :func:`settle_routes` then gives each the
    ``Allow`` of the whole path, and the routes whose path a literal segment makes more specific
    (``/api/packages/{name}/latest`` for ``/api/packages/{name}/{version}``)."""

    def __init__(
        self, path: str, endpoint: Callable[..., Any], operation: Operation, **kwargs: Any
    ) -> None:
        super().__init__(path, endpoint, methods=[operation.method], **kwargs)
        self.operation = operation
        self.allow = ", ".join(sorted(self.methods or ()))
        self.shadowed_by: list[Route] = []

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        shadowed = (r.matches(scope)[0] is not Match.NONE for r in self.shadowed_by)
        if scope["type"] == "http" and any(shadowed):
            return Match.NONE, {}  # ".../latest" is that route's, whatever the method
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(405, headers={"Allow": self.allow})
        await super().handle(scope, receive, send)


def settle_routes(routes: Sequence[BaseRoute]) -> None:
    """A method no route of a path has is one 405 whose ``Allow`` lists every method of the
    path (Starlette names only the first route's); a literal segment wins over a parameter."""
    plain = [r for r in routes if isinstance(r, Route)]
    methods: dict[str, set[str]] = {}
    for route in plain:
        methods.setdefault(route.path, set()).update(route.methods or ())
    for route in plain:
        if isinstance(route, DocumentedRoute):
            route.allow = ", ".join(sorted(methods[route.path]))
            route.shadowed_by = [r for r in plain if _more_specific(r.path, route.path)]


def _more_specific(path: str, than: str) -> bool:
    """Whether ``path`` is ``than`` with some of its parameters replaced by literal segments."""
    mine, theirs = path.split("/"), than.split("/")
    if len(mine) != len(theirs) or mine == theirs:
        return False
    pairs = zip(mine, theirs, strict=True)
    return all(a == b or (b.startswith("{") and not a.startswith("{")) for a, b in pairs)


# Routes defined outside this package's REST modules (probes, metrics) documented here.
_EXTERNAL_DOCS = {
    "/healthz": Operation(
        "Liveness probe",
        "200 while the process runs. No authentication.",
        tags=("health",),
        secured=False,
        extra_responses={
            "200": {
                "description": "Alive.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string"},
                                "version": {"type": "string"},
                            },
                            "required": ["status", "version"],
                        }
                    }
                },
            }
        },
    ),
    "/metrics": Operation(
        "Prometheus metrics",
        "Prometheus text exposition format. No authentication.",
        tags=("health",),
        secured=False,
        extra_responses={
            "200": {
                "description": "Metrics.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    ),
    "/readyz": Operation(
        "Readiness probe",
        "200 when the database is reachable and migrated, else 503 with the problems.",
        tags=("health",),
        secured=False,
        extra_responses={
            "200": {"description": "Ready.", "content": {"application/json": {"schema": {}}}},
            "503": {"description": "Not ready.", "content": {"application/json": {"schema": {}}}},
        },
    ),
}


def _json_content(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": ref}}}


def links(operation_ids: Sequence[str], **parameters: str) -> dict[str, Any]:
    """OpenAPI links to ``operation_ids``, each given ``parameters`` (runtime expressions such as
    ``$response.body#/name`` or ``$request.path.id``)."""
    return {op: {"operationId": op, "parameters": parameters} for op in operation_ids}


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


def _operation_object(path: str, name: str, op: Operation) -> dict[str, Any]:
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
    out: dict[str, Any] = {
        "operationId": name,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": [p.to_openapi() for p in op.params],
        "responses": responses,
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


def build_openapi(routes: Sequence[BaseRoute], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (Starlette routes of the application)."""
    structs = list(RESPONSE_STRUCTS)
    for route in routes:  # response types declared by routes outside models.py
        response = getattr(getattr(route, "operation", None), "response", None)
        if response is not None and response not in structs:
            structs.append(response)
    _, components = msgspec.json.schema_components(structs, ref_template=SCHEMA_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        if isinstance(route, DocumentedRoute):
            op = route.operation
        elif route.path in _EXTERNAL_DOCS:
            op = _EXTERNAL_DOCS[route.path]
        else:
            op = Operation(
                route.name.replace("_", " "),
                "Not part of the JSON API; see the project documentation.",
                tags=("other",),
                secured=False,
                extra_responses={"200": {"description": "OK."}},
            )
        method = op.method.lower()
        if route.methods and op.method not in route.methods:
            method = sorted(m for m in route.methods if m != "HEAD")[0].lower()
        paths.setdefault(route.path, {})[method] = _operation_object(route.path, route.name, op)
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
        "paths": paths,
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


def swagger_ui_assets() -> dict[str, tuple[bytes, str]]:
    """The Swagger UI files served under /docs/static, read from the installed wheel."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return {}
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    types = {".css": "text/css", ".js": "text/javascript"}
    assets: dict[str, tuple[bytes, str]] = {}
    for name in SWAGGER_UI_FILES:
        path = static / name
        if path.is_file():
            assets[name] = (path.read_bytes(), types[path.suffix])
    assets["init.js"] = (_DOCS_INIT, "text/javascript")
    return assets


def routes(services: Services) -> list[Route]:
    cache: dict[str, bytes] = {}

    async def openapi_json(request: Request) -> Response:
        body = cache.get("spec")
        if body is None:
            spec = build_openapi(request.app.routes, version=services.version)
            body = cache["spec"] = msgspec.json.encode(spec)
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(_DOCS_HTML)

    assets: dict[str, tuple[bytes, str]] = {}

    async def docs_static(request: Request) -> Response:
        if not assets:
            assets.update(await anyio.to_thread.run_sync(swagger_ui_assets))
        found = assets.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "no such file")
        return Response(
            found[0], media_type=found[1], headers={"Cache-Control": "public, max-age=3600"}
        )

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False),
        Route("/docs", docs, methods=["GET"], include_in_schema=False),
        Route("/docs/static/{name}", docs_static, methods=["GET"], include_in_schema=False),
    ]
