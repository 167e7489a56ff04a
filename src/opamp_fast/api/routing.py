"""Routes as data: each REST handler declared with its OpenAPI :class:`Operation`.

Each resource module has a :class:`Router` and declares every handler under it::

    router = Router(tags=("groups",))

    @router.get("/api/groups", Operation("List groups", response=GroupList, errors=(503,)))
    async def list_groups(request: Request) -> Response: ...

The router only collects declarations, in order; ``build_starlette`` asks each module for its
routes (:meth:`Router.routes`, new Starlette routes for every app, so that no app settles
another's) and lists them in the order they are matched and documented. The handler's name is
the route's name, which is the operation id in the OpenAPI document.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from .params import PageParam, Param

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """OpenAPI metadata of one route; its method and tags come from the :class:`Router`."""

    summary: str
    description: str = ""
    params: Sequence[Param | PageParam] = ()
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


def links(operation_ids: Sequence[str], **parameters: str) -> dict[str, Any]:
    """OpenAPI links to ``operation_ids``, each given ``parameters`` (runtime expressions such as
    ``$response.body#/name`` or ``$request.path.id``)."""
    return {op: {"operationId": op, "parameters": parameters} for op in operation_ids}


class DocumentedRoute(Route):
    """A Starlette route that carries its OpenAPI :class:`Operation`.

    Several routes may share a path (one per method); :func:`settle_routes` then gives each the
    ``Allow`` of the whole path, and the routes whose path a literal segment makes more specific
    (``/api/packages/{name}/latest`` for ``/api/packages/{name}/{version}``)."""

    def __init__(self, path: str, endpoint: Endpoint, operation: Operation) -> None:
        super().__init__(path, endpoint, methods=[operation.method])
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


@dataclass(frozen=True, slots=True)
class _Declared:
    path: str
    endpoint: Endpoint
    operation: Operation | None  # None: a page outside the document (console, Swagger UI)


class Router:
    """The routes of one module, in the order they are declared."""

    def __init__(self, *, tags: Sequence[str] = ("agents",)) -> None:
        self.tags = tuple(tags)
        self._declared: list[_Declared] = []

    def get(self, path: str, operation: Operation) -> Callable[[Endpoint], Endpoint]:
        return self._declare(path, operation, "GET")

    def post(self, path: str, operation: Operation) -> Callable[[Endpoint], Endpoint]:
        return self._declare(path, operation, "POST")

    def put(self, path: str, operation: Operation) -> Callable[[Endpoint], Endpoint]:
        return self._declare(path, operation, "PUT")

    def delete(self, path: str, operation: Operation) -> Callable[[Endpoint], Endpoint]:
        return self._declare(path, operation, "DELETE")

    def page(self, path: str) -> Callable[[Endpoint], Endpoint]:
        """A GET route left out of the OpenAPI document: the console's and Swagger UI's pages
        and files, and the document itself."""
        return self._declare(path, None, "GET")

    def _declare(
        self, path: str, operation: Operation | None, method: str
    ) -> Callable[[Endpoint], Endpoint]:
        if operation is not None:
            operation = dataclasses.replace(operation, method=method, tags=self.tags)

        def declare(endpoint: Endpoint) -> Endpoint:
            self._declared.append(_Declared(path, endpoint, operation))
            return endpoint

        return declare

    def routes(self) -> list[Route]:
        """New Starlette routes for one app, in declaration order."""
        return [
            Route(d.path, d.endpoint, methods=["GET"], include_in_schema=False)
            if d.operation is None
            else DocumentedRoute(d.path, d.endpoint, d.operation)
            for d in self._declared
        ]
