"""Strict parsing of path and query parameters, and their OpenAPI descriptions side by side.

Why strict: a bad ``limit`` or a tampered ``cursor`` must be a 400 that names the parameter,
never a 500 from deep inside psycopg (``OFFSET`` past bigint, a NUL byte in text, a huge
integer). Every value is checked here, before any handler logic, and each parameter's OpenAPI
description is declared next to its parser so the two stay in step. Unknown query parameters are
ignored (clients may add cache busters).

Cursors are opaque to clients (pass ``next_cursor`` back unchanged), and their shape is
published as a ``pattern`` so that the OpenAPI document says exactly which strings are cursors:
dot-separated ASCII fields after a tag naming the list (``h`` connection history,
``a`` agent lists, ``l`` the audit log), so a cursor from one list is rejected by another
instead of silently paging wrongly. Any string of that shape is a position to resume after.
The last field is the list's ``total`` as of the first page: a keyset walk does not pay for a
recount on every page (for a flapping agent with 20k history rows the count is most of a
page's cost), and the rows it walks are exactly the ones that existed when it started.

``limit``, ``offset`` and ``cursor`` are described as one exploded object parameter (``page``:
on the wire they are the usual separate query parameters) because only an object schema can
say that ``offset`` and ``cursor`` exclude each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from starlette.datastructures import QueryParams
from starlette.requests import Request

from ..protocol.codec import format_instance_uid, parse_instance_uid_text
from ..strictint import parse_ascii_int
from .errors import APIError, invalid_parameter

DEFAULT_LIMIT = 100
MAX_OFFSET = 1_000_000_000  # beyond this, OFFSET is pointless; use the cursor
MAX_TEXT_CHARS = 256
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UID_PATTERN = (
    r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9A-Fa-f]{32})$"
)
NO_NUL_PATTERN = r"^[^\x00]*$"  # Postgres text cannot hold NUL
LABEL_FILTER_PATTERN = r"^[^:\x00]+:[^\x00]*$"  # key:value
# Cursors (see the module docstring): a tag, then the position and the total as of page 1.
AGENT_CURSOR_PATTERN = r"^a\.[0-9a-f]{32}\.[0-9]{1,18}$"  # uid, total
HISTORY_CURSOR_PATTERN = r"^h\.-?[0-9]{1,16}\.[0-9]{1,18}\.[0-9]{1,18}$"  # micros, id, total


# ------------------------------------------------------------------------ OpenAPI descriptions


@dataclass(frozen=True, slots=True)
class Param:
    """An OpenAPI parameter object (``in`` is ``query`` or ``path``)."""

    name: str
    location: Literal["query", "path"]
    description: str
    schema: dict[str, Any] = field(default_factory=dict)
    required: bool = False
    explode: bool | None = None

    def to_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.location,
            "description": self.description,
            "required": self.required or self.location == "path",
            "schema": self.schema,
        }
        if self.explode is not None:
            out["style"] = "form"
            out["explode"] = self.explode
        return out


def text_schema(max_length: int = MAX_TEXT_CHARS) -> dict[str, Any]:
    """A string the database can store: at most ``max_length`` characters, no NUL."""
    return {"type": "string", "maxLength": max_length, "pattern": NO_NUL_PATTERN}


def limit_schema(max_page_size: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": max_page_size, "default": DEFAULT_LIMIT}


def page_param(max_page_size: int, cursor_pattern: str, filters: tuple[Param, ...] = ()) -> Param:
    """``limit``, ``offset`` and ``cursor`` (see the module docstring), and the list's
    ``filters``: one object, each property its own query parameter on the wire. Other query
    parameters are allowed (and ignored), hence no ``additionalProperties: false``."""
    names = ", ".join(f"`{p.name}`" for p in filters)
    return Param(
        "query" if filters else "page",
        "query",
        (f"Filters ({names}) and page: " if filters else "")
        + f"`limit` (page size, 1 to {max_page_size}), `offset` (items to skip) or `cursor` (the "
        "`next_cursor` of the previous page of the same list: keyset, constant cost however "
        "deep), each its own query parameter (`?limit=50&cursor=...`). `offset` and `cursor` "
        "cannot be combined.",
        {
            "type": "object",
            "properties": {
                **{p.name: {**p.schema, "description": p.description} for p in filters},
                "limit": limit_schema(max_page_size),
                "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                "cursor": {"type": "string", "pattern": cursor_pattern},
            },
            "not": {"required": ["offset", "cursor"]},
        },
        explode=True,
    )


@dataclass(frozen=True, slots=True)
class PageParam:
    """A list's :func:`page_param`, declared before the server's page size is known: the
    document is built with ``api_max_page_size`` of the server that serves it."""

    cursor_pattern: str
    filters: tuple[Param, ...] = ()

    def resolve(self, max_page_size: int) -> Param:
        return page_param(max_page_size, self.cursor_pattern, self.filters)


AGENT_ID_PARAM = Param(
    "id",
    "path",
    "Agent instance uid: a canonical UUID or 32 hex digits.",
    {"type": "string", "pattern": UID_PATTERN},
    required=True,
)
STATUS_PARAM = Param(
    "status",
    "query",
    "Only agents with this status.",
    {"type": "string", "enum": ["online", "offline"]},
)
LABEL_PARAM = Param(
    "label",
    "query",
    "Only agents carrying this label, as `key:value`; repeat for several (all must match).",
    {
        "type": "array",
        "items": {"type": "string", "pattern": LABEL_FILTER_PATTERN, "maxLength": MAX_TEXT_CHARS},
    },
    explode=True,
)
DRIFTED_PARAM = Param(
    "drifted",
    "query",
    "`true`: only agents whose effective config drifted from the one they applied; `false`: "
    "only the others.",
    {"type": "boolean"},
)
MAX_OFFLINE_PARAM = Param(
    "max_offline_s",
    "query",
    "Only agents online, or offline for at most this many seconds (86400: hide those offline "
    "for more than a day).",
    {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
)
Q_PARAM = Param(
    "q",
    "query",
    "Case-insensitive prefix of the agent name (`service.name`).",
    text_schema(),
)


# ------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int
    cursor: str | None  # raw cursor text, decoded by the list that owns it


def parse_agent_id(raw: str) -> bytes:
    try:
        return parse_instance_uid_text(raw)
    except ValueError:
        shown = raw if len(raw) <= 64 else raw[:64] + "..."
        raise APIError(
            400,
            "invalid_agent_id",
            f"agent id {shown!r} is not a UUID (canonical 8-4-4-4-12 form or 32 hex digits)",
        ) from None


def path_agent_id(request: Request) -> bytes:
    """The agent id of the path (``{id}``); 400 ``invalid_agent_id`` when it is not one."""
    return parse_agent_id(request.path_params["id"])


def query_integer(params: QueryParams, name: str, default: int, lo: int, hi: int) -> int:
    """The integer query parameter ``name`` (ASCII digits, optional ``-``) in ``lo..hi``."""
    raw = params.get(name)
    if raw is None:
        return default
    value = parse_ascii_int(raw, max_digits=19, signed=True)
    if value is None:
        raise invalid_parameter(name, f"{raw[:40]!r} is not an integer")
    if not lo <= value <= hi:
        raise invalid_parameter(name, f"must be between {lo} and {hi}, got {value}")
    return value


def parse_page(params: QueryParams, max_page_size: int) -> Page:
    limit = query_integer(params, "limit", DEFAULT_LIMIT, 1, max_page_size)
    offset = query_integer(params, "offset", 0, 0, MAX_OFFSET)
    cursor = params.get("cursor")
    if cursor is not None and "offset" in params:
        raise invalid_parameter("offset", "cannot be combined with cursor")
    return Page(limit, offset, cursor)


def cursor_fields(cursor: str, pattern: str, what: str) -> list[str]:
    """The fields after the tag of a cursor of ``pattern``'s shape (so numeric fields are ASCII
    digits, bounded); else a 400 that says which list's cursor was expected."""
    if not re.fullmatch(pattern, cursor):
        raise invalid_parameter("cursor", f"not {what} cursor (pass next_cursor back unchanged)")
    return cursor.split(".")[1:]


def encode_history_cursor(connected_at: datetime, row_id: int, total: int) -> str:
    micros = (connected_at - EPOCH) // timedelta(microseconds=1)
    return f"h.{micros}.{row_id}.{total}"


def decode_history_cursor(cursor: str) -> tuple[datetime, int, int]:
    """``(connected_at, id, total)``: resume strictly after that row; ``total`` as of page 1."""
    micros, row_id, total = cursor_fields(cursor, HISTORY_CURSOR_PATTERN, "a connection-history")
    return EPOCH + timedelta(microseconds=int(micros)), int(row_id), int(total)


def encode_agent_cursor(uid_text: str, total: int) -> str:
    return f"a.{parse_instance_uid_text(uid_text).hex()}.{total}"


def decode_agent_cursor(cursor: str) -> tuple[str, int]:
    """``(uid_text, total)``: the canonical uid the next page starts after, and the total as of
    the first page (a keyset walk does not recount)."""
    uid_hex, total = cursor_fields(cursor, AGENT_CURSOR_PATTERN, "an agent-list")
    return format_instance_uid(bytes.fromhex(uid_hex)), int(total)


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time (``T`` and ``Z`` in either case), else None: exactly the
    ``date-time`` format of JSON Schema, not everything ``fromisoformat`` reads."""
    upper = text.upper()
    if not _RFC3339.fullmatch(upper):
        return None
    try:
        return datetime.fromisoformat(upper.replace("Z", "+00:00"))
    except ValueError:  # month 13, hour 24, a leap second
        return None


def query_time(params: QueryParams, name: str) -> datetime | None:
    """The RFC 3339 date-time query parameter ``name`` (None when absent); else a 400."""
    raw = params.get(name)
    if raw is None:
        return None
    value = parse_rfc3339(raw)
    if value is None:
        raise invalid_parameter(name, f"{raw[:40]!r} is not an RFC 3339 date-time")
    return value


def query_bool(params: QueryParams, name: str, default: bool = False) -> bool:
    """The boolean query parameter ``name``: ``true`` or ``false``; else a 400."""
    raw = params.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise invalid_parameter(name, f"must be true or false, got {raw[:40]!r}")
    return raw == "true"


def parse_status(params: QueryParams) -> str | None:
    raw = params.get("status")
    if raw is None:
        return None
    if raw not in ("online", "offline"):
        raise invalid_parameter("status", f"must be 'online' or 'offline', got {raw[:40]!r}")
    return raw


def _text(name: str, raw: str) -> str:
    if len(raw) > MAX_TEXT_CHARS:
        raise invalid_parameter(name, f"longer than {MAX_TEXT_CHARS} characters")
    if "\x00" in raw:
        raise invalid_parameter(name, "must not contain NUL characters")
    return raw


def parse_labels(params: QueryParams) -> list[tuple[str, str]]:
    labels = []
    for raw in params.getlist("label"):
        key, sep, value = _text("label", raw).partition(":")
        if not sep or not key:
            raise invalid_parameter("label", f"{raw[:40]!r} is not of the form key:value")
        labels.append((key, value))
    return labels


def parse_q(params: QueryParams) -> str | None:
    raw = params.get("q")
    if raw is None or raw == "":
        return None
    return _text("q", raw)
