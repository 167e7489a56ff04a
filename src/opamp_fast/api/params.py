"""Strict parsing of path and query parameters, and their OpenAPI descriptions side by side.

Why strict: a bad ``limit`` or a tampered ``cursor`` must be a 400 that names the parameter,
never a 500 from deep inside psycopg (``OFFSET`` past bigint, a NUL byte in text, a huge
integer). Every value is checked here, before any handler logic, and each parameter's OpenAPI
description is declared next to its parser so the two stay in step. Unknown query parameters are
ignored (clients may add cache busters).

Cursors are opaque to clients: base64url (no padding) of a msgspec-encoded JSON array whose
first element tags the list it belongs to (``"h"`` connection history, ``"a"`` agent lists), so a
cursor from one list is rejected by another instead of silently paging wrongly. The last element
is the list's ``total`` as of the first page: a keyset walk does not pay for a recount on every
page (for a flapping agent with 20k history rows the count is most of a page's cost), and the rows
it walks are exactly the ones that existed when it started.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from starlette.datastructures import QueryParams

from ..protocol.codec import format_instance_uid, parse_instance_uid_text
from ..strictint import parse_ascii_int
from .errors import APIError, invalid_parameter

DEFAULT_LIMIT = 100
MAX_OFFSET = 1_000_000_000  # beyond this, OFFSET is pointless; use the cursor
MAX_CURSOR_CHARS = 256
MAX_TEXT_CHARS = 256
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
UID_PATTERN = (
    r"^([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9A-Fa-f]{32})$"
)

_cursor_encoder = msgspec.json.Encoder()
_history_cursor = msgspec.json.Decoder(tuple[Literal["h"], int, int, int])
_agent_cursor = msgspec.json.Decoder(tuple[Literal["a"], str, int])


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


def limit_param(max_page_size: int) -> Param:
    return Param(
        "limit",
        "query",
        f"Page size, 1 to {max_page_size}.",
        {"type": "integer", "minimum": 1, "maximum": max_page_size, "default": DEFAULT_LIMIT},
    )


OFFSET_PARAM = Param(
    "offset",
    "query",
    "Items to skip. Deep pages are cheaper with `cursor`; cannot be combined with it.",
    {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
)
CURSOR_PARAM = Param(
    "cursor",
    "query",
    "Opaque keyset cursor: the `next_cursor` of the previous page of the same list.",
    {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": "^[A-Za-z0-9_-]+$"},
)
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
    {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:.*$", "maxLength": 256}},
    explode=True,
)
Q_PARAM = Param(
    "q",
    "query",
    "Case-insensitive prefix of the agent name (`service.name`).",
    {"type": "string", "maxLength": MAX_TEXT_CHARS},
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
    if cursor is not None:
        if "offset" in params:
            raise invalid_parameter("offset", "cannot be combined with cursor")
        if not cursor or len(cursor) > MAX_CURSOR_CHARS or not _B64URL.fullmatch(cursor):
            raise invalid_parameter("cursor", "malformed (not a cursor returned by this list)")
    return Page(limit, offset, cursor)


def _cursor_json(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid_parameter("cursor", "malformed (not valid base64url)") from None


def _encode_cursor(value: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(_cursor_encoder.encode(value)).rstrip(b"=").decode("ascii")


def encode_history_cursor(connected_at: datetime, row_id: int, total: int) -> str:
    micros = (connected_at - EPOCH) // timedelta(microseconds=1)
    return _encode_cursor(("h", micros, row_id, total))


def decode_history_cursor(cursor: str) -> tuple[datetime, int, int]:
    """``(connected_at, id, total)``: resume strictly after that row; ``total`` as of page 1."""
    try:
        _, micros, row_id, total = _history_cursor.decode(_cursor_json(cursor))
        if not (0 <= row_id < 2**63 and 0 <= total < 2**63):
            raise ValueError(row_id)
        return EPOCH + timedelta(microseconds=micros), row_id, total
    except (msgspec.DecodeError, ValueError, OverflowError):
        raise invalid_parameter("cursor", "not a connection-history cursor") from None


def encode_agent_cursor(uid_text: str, total: int) -> str:
    return _encode_cursor(("a", uid_text, total))


def decode_agent_cursor(cursor: str) -> tuple[str, int]:
    """``(uid_text, total)``: the canonical uid the next page starts after, and the total as of
    the first page (a keyset walk does not recount)."""
    try:
        _, uid_text, total = _agent_cursor.decode(_cursor_json(cursor))
        if not 0 <= total < 2**63:
            raise ValueError(total)
        return format_instance_uid(parse_instance_uid_text(uid_text)), total
    except (msgspec.DecodeError, ValueError):
        raise invalid_parameter("cursor", "not an agent-list cursor") from None


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
