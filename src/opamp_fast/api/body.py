"""Reading JSON request bodies: bounded, always a JSON object, clear 400/413 errors."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request

from ..configs import ConfigInputError
from .errors import APIError

_decoder = msgspec.json.Decoder()


async def read_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 beyond ``max_bytes``, 400 when not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
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
    if not isinstance(value, dict):
        raise APIError(400, "invalid_body", "the body must be a JSON object")
    return value


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
