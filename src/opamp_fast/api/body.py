"""Reading JSON request bodies: bounded in size and in nesting, always a JSON object, clear
400/413 errors.

Nesting is bounded because a document nested thousands deep is cheap to send and expensive to
hold: the decoder recurses (past its limit it raises RecursionError), and so would everything
that walks the value afterwards (audit rows, error messages). Every body this API accepts is a
few levels deep; :data:`MAX_JSON_DEPTH` leaves ample room.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request

from ..remote_config.model import MAX_LABEL_CHARS, ConfigInputError
from ..strictint import parse_ascii_int
from .errors import APIError
from .params import text_schema

MAX_JSON_DEPTH = 32  # arrays and objects inside one another

_decoder = msgspec.json.Decoder()


def body_integer(value: Any, what: str, lo: int, hi: int) -> int:
    """An integer of a JSON body in ``lo..hi``, else a 400. As in JSON Schema, a number with no
    fractional part is an integer (``3.0``, ``3e0``); ``true`` is not."""
    if isinstance(value, float) and value.is_integer() and lo <= value <= hi:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise APIError(400, "invalid_body", f"{what}: must be an integer from {lo} to {hi}")
    return value


def labels_schema(max_entries: int) -> dict[str, Any]:
    """JSON Schema of a ``{key: value}`` map as
    :func:`~opamp_fast.remote_config.model.parse_labels` takes it (labels, selectors)."""
    text = text_schema(MAX_LABEL_CHARS)
    return {
        "type": "object",
        "maxProperties": max_entries,
        "propertyNames": {**text, "minLength": 1},
        "additionalProperties": text,
    }


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or null."""
    return {**schema, "type": [schema["type"], "null"]}


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` when it is a plain decimal number, else None."""
    declared = request.headers.get("content-length")
    return None if declared is None else parse_ascii_int(declared, max_digits=19)


async def read_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 beyond ``max_bytes``, 400 when not a JSON object or
    nested deeper than :data:`MAX_JSON_DEPTH`."""
    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
    try:
        value = _decoder.decode(b"".join(chunks))
    except msgspec.DecodeError as exc:
        raise APIError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep() from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise too_deep()
    if not isinstance(value, dict):
        raise APIError(400, "invalid_body", "the body must be a JSON object")
    return value


def json_depth(value: Any) -> int:
    """How many arrays and objects deep ``value`` goes (a scalar is 0); iterative, so any depth
    the decoder produced is measured without recursion."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def too_deep() -> APIError:
    return APIError(
        400, "json_too_deep", f"the body is nested deeper than {MAX_JSON_DEPTH} arrays or objects"
    )


def too_large(max_bytes: int) -> APIError:
    return APIError(413, "too_large", f"the body is larger than {max_bytes} bytes")


def input_error(exc: ConfigInputError) -> APIError:
    return APIError(exc.status, exc.code, exc.message)


def only_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(
            400,
            "invalid_body",
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(sorted(allowed))}",
        )
