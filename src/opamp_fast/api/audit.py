"""``/api/audit``: who changed what, newest first; and how handlers append to it.

Every change made through the API appends one row in the same transaction as the change
(:func:`entry` builds it from the request: the token's ``sub`` and role, the request id, the
client address). A refused change (:class:`~opamp_fast.api.roles.Forbidden`) appends an
``outcome = 'denied'`` row before the 403 goes out. The table refuses UPDATE and DELETE in the
database itself (``0006_configs.sql``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..auth import principal_of
from ..services import Services
from ..storage.config_queries import AuditEntry, AuditFilter, append_audit, audit_page
from .config_models import AuditPage, AuditRecord
from .errors import invalid_parameter
from .openapi import DocumentedRoute, Operation
from .params import (
    CURSOR_PARAM,
    MAX_TEXT_CHARS,
    Param,
    _cursor_json,
    _encode_cursor,
    query_integer,
)
from .responses import JSONResponse, error_response
from .roles import Forbidden, client_addr, request_id, require_role

__all__ = ["entry", "exception_handlers", "routes"]

_audit_cursor = msgspec.json.Decoder(tuple[Literal["l"], int, int])
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


def exception_handlers(services: Services) -> dict[type[Exception], Any]:
    """The 403 handler: audit the refusal, then answer with the JSON error."""

    async def forbidden(request: Request, exc: Exception) -> Response:
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
        if services.denials is not None:
            await services.denials.record(row)
        else:
            await services.db.run(lambda conn: append_audit(conn, row))
        return error_response(exc.status, exc.code, exc.message)

    return {Forbidden: forbidden}


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


def _time(request: Request, name: str) -> datetime | None:
    raw = _text(request, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter(name, f"{raw[:40]!r} is not an RFC 3339 time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cursor(request: Request) -> tuple[datetime, int] | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        _, micros, row_id = _audit_cursor.decode(_cursor_json(raw))
        return datetime.fromtimestamp(micros / 1_000_000, UTC), row_id
    except (msgspec.DecodeError, ValueError, OverflowError, OSError):
        raise invalid_parameter("cursor", "not an audit-log cursor") from None


def _micros(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_FILTER_PARAMS = (
    Param("actor", "query", "Only entries by this actor (the token's `sub`).", {"type": "string"}),
    Param(
        "target", "query", "Only entries about this target, e.g. `group:prod`.", {"type": "string"}
    ),
    Param("action", "query", "Only this action, e.g. `config.create`.", {"type": "string"}),
    Param("since", "query", "Entries at or after this time (RFC 3339).", {"type": "string"}),
    Param("until", "query", "Entries before this time (RFC 3339).", {"type": "string"}),
    Param(
        "limit",
        "query",
        f"Page size, 1 to {MAX_LIMIT}.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    CURSOR_PARAM,
)


def routes(services: Services) -> list[DocumentedRoute]:
    db = services.db

    async def audit(request: Request) -> Response:
        require_role(request, "operator", action="audit.read", target="audit")
        flt = AuditFilter(
            actor=_text(request, "actor"),
            target=_text(request, "target"),
            action=_text(request, "action"),
            since=_time(request, "since"),
            until=_time(request, "until"),
        )
        limit = query_integer(request.query_params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        after = _cursor(request)
        rows = await db.run(lambda conn: audit_page(conn, flt, limit=limit, after=after))
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_cursor(("l", _micros(rows[-1][1]), rows[-1][0]))
        entries = [AuditRecord(r[0], r[1].astimezone(UTC), *r[2:]) for r in rows]
        return JSONResponse(AuditPage(entries=entries, limit=limit, next_cursor=next_cursor))

    return [
        DocumentedRoute(
            "/api/audit",
            audit,
            Operation(
                "Audit log",
                "Every change made through the API (and token minting by the CLI), refused "
                "ones included (`outcome: denied`), newest first, keyset-paginated. "
                "Needs the operator role. Append-only, enforced by the database.",
                params=_FILTER_PARAMS,
                response=AuditPage,
                errors=(400, 403, 503),
                tags=("audit",),
            ),
            name="audit_log",
        )
    ]
