"""The REST API's error type and its exception handlers: one JSON shape for every failure.

Handlers raise :class:`APIError` (status, machine-readable ``code``, human message); the
handlers installed by ``build_starlette`` turn it, Starlette's own 404/405, and a database
outage into ``{"error": {"code", "message"}}`` so clients never see HTML or a bare 500 for
their own mistakes.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..protocol.codec import format_instance_uid
from .responses import error_response

logger = logging.getLogger(__name__)


class APIError(Exception):
    """A client-visible failure with its HTTP status and error code."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra: dict[str, Any] | None = None  # more members of the error object, if any


def invalid_parameter(name: str, why: str) -> APIError:
    """400 ``invalid_parameter`` whose message starts with the parameter's name."""
    return APIError(400, "invalid_parameter", f"{name}: {why}")


def agent_not_found(uid: bytes) -> APIError:
    """404 ``agent_not_found``: no such agent in the registry or in Postgres."""
    return APIError(404, "agent_not_found", f"no agent {format_instance_uid(uid)}")


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers, extra=exc.extra)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def database_error_handler(request: Request, exc: Exception) -> Response:
    """Postgres unreachable or the pool exhausted: 503, retryable, logged once per request."""
    logger.warning("REST %s %s: database unavailable: %s", request.method, request.url.path, exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry shortly",
        headers={"Retry-After": "5"},
    )


EXCEPTION_HANDLERS = {
    APIError: api_error_handler,
    HTTPException: http_error_handler,
    psycopg.OperationalError: database_error_handler,
    PoolTimeout: database_error_handler,
}
