"""The web console at ``/ui``: static files shipped in the package, and the one
JSON endpoint only it needs, ``GET /api/ui/overview``.

Why it looks like this: the console must work on a machine without internet access, so every
byte it loads comes from this server (``ui/static``: hand-written HTML, CSS and JavaScript, no
build step, no CDN), and a strict Content-Security-Policy (``'self'`` only) makes any stray
external reference fail loudly in the browser instead of leaking a request. Everything else it
shows comes from the documented REST API and the event stream with the user's bearer token.
The files are read once, at the first request, in a worker thread.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..auth import principal_of
from .responses import JSONResponse
from .routing import Operation, Router
from .state import StaticFiles, services_of, shared_of

STATIC_DIR = Path(__file__).resolve().parent.parent / "ui" / "static"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
OVERVIEW_CACHE_S = 1.0  # one aggregate query per second at most, however many consoles

_OVERVIEW = """
SELECT status, transport,
    COALESCE(description->'identifying_attributes'->>'service.version',
             description->'non_identifying_attributes'->>'service.version') AS version,
    count(*)
FROM agents GROUP BY 1, 2, 3
"""


class GroupCount(msgspec.Struct, kw_only=True):
    """Agents of one transport or version."""

    key: str | None
    online: int
    offline: int


class OnlineSample(msgspec.Struct, kw_only=True):
    at: datetime
    online: int


class FleetOverview(msgspec.Struct, kw_only=True):
    """Fleet counts by status, transport and version, and online agents over the last hour."""

    total: int
    online: int
    offline: int
    by_transport: list[GroupCount]
    by_version: list[GroupCount]
    online_history: list[OnlineSample]
    as_of: datetime
    last_event_id: str | None


class ConsoleSession(msgspec.Struct, kw_only=True):
    """Who the console is signed in as, so that it offers only what the token may do."""

    subject: str
    role: str  # viewer, operator or admin
    expires_at: datetime | None


def _groups(counts: dict[str | None, list[int]]) -> list[GroupCount]:
    out = [GroupCount(key=k, online=v[0], offline=v[1]) for k, v in counts.items()]
    out.sort(key=lambda g: (-(g.online + g.offline), g.key or ""))
    return out[:50]


def overview_of(rows: list[tuple[str, str | None, str | None, int]]) -> dict[str, Any]:
    by_transport: dict[str | None, list[int]] = {}
    by_version: dict[str | None, list[int]] = {}
    online = offline = 0
    for status, transport, version, count in rows:
        col = 0 if status == "online" else 1
        by_transport.setdefault(transport, [0, 0])[col] += count
        by_version.setdefault(version, [0, 0])[col] += count
        if col == 0:
            online += count
        else:
            offline += count
    return {
        "total": online + offline,
        "online": online,
        "offline": offline,
        "by_transport": _groups(by_transport),
        "by_version": _groups(by_version),
    }


def load_static() -> StaticFiles:
    files = {}
    for path in STATIC_DIR.iterdir():
        if path.is_file() and path.suffix in _TYPES:
            files[path.name] = (path.read_bytes(), _TYPES[path.suffix])
    return files


router = Router(tags=("console",))


async def _static(request: Request, name: str) -> Response:
    files = shared_of(request).console_files
    if not files:
        files.update(await anyio.to_thread.run_sync(load_static))
    found = files.get(name)
    if found is None:
        raise HTTPException(404, "no such file")
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    headers["Cache-Control"] = "no-cache"  # revalidate: a new release shows at once
    return Response(found[0], media_type=found[1], headers=headers)


@router.page("/ui")
async def index(request: Request) -> Response:
    return await _static(request, "index.html")


@router.page("/ui/")
async def index_slash(request: Request) -> Response:
    return RedirectResponse("/ui", 308)


@router.page("/ui/static/{name}")
async def asset(request: Request) -> Response:
    return await _static(request, request.path_params["name"])


def _fetch_overview(conn: Any) -> list[tuple[str, str | None, str | None, int]]:
    rows: list[tuple[str, str | None, str | None, int]] = conn.execute(_OVERVIEW).fetchall()
    return rows


@router.get(
    "/api/ui/overview",
    Operation(
        "Fleet overview for the console",
        "Agents by status, transport and `service.version` (from Postgres, cached for "
        "a second), the online count sampled once a minute over the last hour, and the "
        "event id to resume `/api/events` from without a gap.",
        response=FleetOverview,
        errors=(503,),
    ),
)
async def ui_overview(request: Request) -> Response:
    services = services_of(request)
    shared = shared_of(request)
    hub = services.events
    last_event_id = hub.last_id if hub is not None else None  # before the query: no gap
    now = time.monotonic()
    if shared.overview is None or now - shared.overview[0] > OVERVIEW_CACHE_S:
        shared.overview = (now, overview_of(await services.db.run(_fetch_overview)))
    history = services.online_history
    points = list(history.points) if history is not None else []
    return JSONResponse(
        FleetOverview(
            **shared.overview[1],
            online_history=[
                OnlineSample(at=datetime.fromtimestamp(t, UTC), online=n) for t, n in points
            ],
            as_of=datetime.now(UTC),
            last_event_id=last_event_id,
        )
    )


@router.get(
    "/api/ui/me",
    Operation(
        "The console's session",
        "The token's subject, role (`viewer`, `operator` or `admin`) and expiry: the "
        "console shows forms the role may not use as disabled.",
        response=ConsoleSession,
    ),
)
async def ui_me(request: Request) -> Response:
    who = principal_of(request.scope)
    exp = (request.scope.get("auth") or {}).get("exp")
    expires = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
    return JSONResponse(ConsoleSession(subject=who.subject, role=who.role, expires_at=expires))
