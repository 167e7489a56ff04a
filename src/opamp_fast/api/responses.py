"""JSON responses encoded with msgspec, and the one error shape used everywhere."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

_encoder = msgspec.json.Encoder()


def encode_json(content: Any) -> bytes:
    """JSON bytes of ``content`` (msgspec; safe to call from worker threads)."""
    return msgspec.json.encode(content)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the given status (and ``extra`` members)."""
    error = {"code": code, "message": message, **(extra or {})}
    return JSONResponse({"error": error}, status, headers=headers)
