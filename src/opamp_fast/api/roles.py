"""Roles on the REST API: who may do what, and the request context audit rows record.

``viewer`` reads, ``operator`` also changes configs, labels, groups and rollouts, ``admin`` may do
everything (disconnect agents included). The role comes from the token's ``role`` claim; a token
without one is an ``admin`` token (see :mod:`opamp_fast.auth`). A refused request raises
:class:`Forbidden`, which the handler installed by ``api.audit`` answers with a 403 JSON error
after appending an audit row of the refusal.

Usage in a handler::

    who = require_role(request, "operator", action="config.create", target=f"config:{name}")
"""

from __future__ import annotations

import re
import uuid

from starlette.requests import Request

from ..auth import Principal, principal_of
from .errors import APIError

__all__ = ["Forbidden", "client_addr", "request_id", "require_role"]

_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


class Forbidden(APIError):
    """403 ``forbidden``: the caller's role is below what the action needs."""

    def __init__(self, who: Principal, minimum: str, action: str, target: str) -> None:
        super().__init__(
            403,
            "forbidden",
            f"role {who.role!r} may not {action} (needs {minimum!r} or above)",
        )
        self.who = who
        self.minimum = minimum
        self.action = action
        self.target = target


def require_role(request: Request, minimum: str, *, action: str, target: str = "") -> Principal:
    """The caller, if its role is ``minimum`` or above; else raise :class:`Forbidden`."""
    who = principal_of(request.scope)
    if not who.allows(minimum):
        raise Forbidden(who, minimum, action, target)
    return who


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is sane, else a fresh one (kept per request)."""
    state = request.scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


def client_addr(request: Request) -> str | None:
    return request.client.host if request.client is not None else None
