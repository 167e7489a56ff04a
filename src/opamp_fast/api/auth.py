"""The REST API's bearer authentication, as ASGI middleware (the tokens themselves: ``auth``)."""

from __future__ import annotations

from typing import Any

from ..auth import AuthError, Principal, TokenVerifier, role_of_claims
from .responses import error_response

__all__ = ["BearerAuthMiddleware"]


class BearerAuthMiddleware:
    """ASGI middleware: every HTTP request under ``prefix`` needs a valid bearer token.

    The verified claims are stored in ``scope["auth"]``, and the caller's ``sub`` and role in
    ``request.state.subject`` / ``request.state.role`` (see :func:`principal_of`). Paths outside
    the prefix (health, metrics, OpenAPI, docs) pass through untouched.
    """

    def __init__(self, app: Any, *, verifier: TokenVerifier, prefix: str = "/api") -> None:
        self.app = app
        self.verifier = verifier
        self.prefix = prefix
        self._prefix_slash = prefix.rstrip("/") + "/"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            claims = self.verifier.verify_header(authorization)
            who = Principal(str(claims.get("sub", "")), role_of_claims(claims))
        except AuthError as exc:
            response = error_response(
                401, "unauthorized", exc.message, headers={"WWW-Authenticate": exc.www_authenticate}
            )
            await response(scope, receive, send)
            return
        scope["auth"] = claims
        state = scope.setdefault("state", {})
        state["subject"] = who.subject
        state["role"] = who.role
        await self.app(scope, receive, send)

    def _protected(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self._prefix_slash)
