"""``/api/audit``: who changed what, newest first; and how handlers append to it.

Every change made through the API appends one row in the same transaction as the change
(:func:`entry` builds it from the request: the token's ``sub`` and role, the request id, the
client address). A refused change (:class:`~opamp_fast.api.roles.Forbidden`) appends an
``outcome = 'denied'`` row before the 403 goes out. The table refuses UPDATE and DELETE in the
database itself (``0006_configs.sql``), but for the retention job's deletes of rows older than
``audit_retention_days``, made as its own role (``0013_lifecycle_availability.sql``,
``storage.retention``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..auth import principal_of
from ..storage.config_queries import AuditEntry, AuditFilter, append_audit, audit_page
from .config_models import AuditPage, AuditRecord
from .errors import invalid_parameter
from .params import (
    EPOCH,
    MAX_TEXT_CHARS,
    Param,
    cursor_fields,
    limit_schema,
    query_integer,
    query_time,
    text_schema,
)
from .responses import JSONResponse, error_response
from .roles import Forbidden, client_addr, request_id, require_role
from .routing import Operation, Router
from .state import services_of

__all__ = ["EXCEPTION_HANDLERS", "entry", "router"]

AUDIT_CURSOR_PATTERN = r"^l\.-?[0-9]{1,16}\.[0-9]{1,18}$"  # the last row's time (micros), id
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def entry(
    request: Request, action: str, target: str, *, before: Any = None, after: Any = None
) -> AuditEntry:
    """The audit row of a change the caller of ``request`` makes."""
    who = principal_of(request.scope)
    return AuditEntry(
        who.subject,
        who.role,
        action,
        target,
        before=before,
        after=after,
        request_id=request_id(request),
        client_addr=client_addr(request),
    )


async def forbidden(request: Request, exc: Exception) -> Response:
    """The 403 handler: audit the refusal, then answer with the JSON error."""
    assert isinstance(exc, Forbidden)
    row = AuditEntry(
        exc.who.subject,
        exc.who.role,
        exc.action,
        _printable(exc.target),
        outcome="denied",
        after={
            "needs": exc.minimum,
            "method": request.method,
            "path": _printable(request.url.path),
        },
        request_id=request_id(request),
        client_addr=client_addr(request),
    )
    services = services_of(request)
    if services.denials is not None:
        await services.denials.record(row)
    else:
        await services.db.run(lambda conn: append_audit(conn, row))
    return error_response(exc.status, exc.code, exc.message)


EXCEPTION_HANDLERS = {Forbidden: forbidden}


def _printable(text: str) -> str:
    """Text a refused caller chose, as it can be stored (Postgres text holds no NUL)."""
    return text.replace("\x00", "\ufffd")[:MAX_TEXT_CHARS]


def _text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_TEXT_CHARS or "\x00" in raw:
        raise invalid_parameter(name, f"at most {MAX_TEXT_CHARS} characters, no NUL")
    return raw


def _cursor(request: Request) -> tuple[datetime, int] | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    micros, row_id = cursor_fields(raw, AUDIT_CURSOR_PATTERN, "an audit-log")
    return EPOCH + timedelta(microseconds=int(micros)), int(row_id)


def _encode_cursor(at: datetime, row_id: int) -> str:
    return f"l.{(at - EPOCH) // timedelta(microseconds=1)}.{row_id}"


_FILTER_PARAMS = (
    Param("actor", "query", "Only entries by this actor (the token's `sub`).", text_schema()),
    Param("target", "query", "Only entries about this target, e.g. `group:prod`.", text_schema()),
    Param("action", "query", "Only this action, e.g. `config.create`.", text_schema()),
    Param(
        "since",
        "query",
        "Entries at or after this time (RFC 3339).",
        {"type": "string", "format": "date-time"},
    ),
    Param(
        "until",
        "query",
        "Entries before this time (RFC 3339).",
        {"type": "string", "format": "date-time"},
    ),
    Param("limit", "query", f"Page size, 1 to {MAX_LIMIT}.", limit_schema(MAX_LIMIT)),
    Param(
        "cursor",
        "query",
        "The `next_cursor` of the previous page (keyset: constant cost however deep).",
        {"type": "string", "pattern": AUDIT_CURSOR_PATTERN},
    ),
)


router = Router(tags=("audit",))


@router.get(
    "/api/audit",
    Operation(
        "Audit log",
        "Every change made through the API (and token minting by the CLI), refused "
        "ones included (`outcome: denied`), newest first, keyset-paginated. "
        "Needs the operator role. Append-only, enforced by the database.",
        params=_FILTER_PARAMS,
        response=AuditPage,
        errors=(400, 403, 503),
    ),
)
async def audit_log(request: Request) -> Response:
    require_role(request, "operator", action="audit.read", target="audit")
    flt = AuditFilter(
        actor=_text(request, "actor"),
        target=_text(request, "target"),
        action=_text(request, "action"),
        since=query_time(request.query_params, "since"),
        until=query_time(request.query_params, "until"),
    )
    limit = query_integer(request.query_params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = _cursor(request)
    rows = await services_of(request).db.run(
        lambda conn: audit_page(conn, flt, limit=limit, after=after)
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1][1], rows[-1][0])
    entries = [AuditRecord(r[0], r[1].astimezone(UTC), *r[2:]) for r in rows]
    return JSONResponse(AuditPage(entries=entries, limit=limit, next_cursor=next_cursor))
