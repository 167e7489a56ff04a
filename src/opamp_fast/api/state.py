"""What the handlers of one Starlette app reach through the request.

``build_starlette`` puts the server's :class:`~opamp_fast.services.Services` on
``app.state.services`` and a new :class:`Shared` on ``app.state.shared``: what is built once per
app and used by every request (credentials, caches, files read once), held by the app rather
than by the modules, so that two apps (a test may build one beside a running server) never
see each other's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..auth import AgentTokenVerifier, agent_token_key
from ..services import Services
from ..settings import Settings
from ..storage.queries import FleetCounts

StaticFiles = dict[str, tuple[bytes, str]]  # file name -> (content, media type)


@dataclass(slots=True)
class Shared:
    """Per-app objects the handlers share (all touched from the event loop only)."""

    # Package downloads: the shared agent token as an Authorization value, and the verifier of
    # per-agent tokens.
    agent_authorization: bytes | None
    agent_tokens: AgentTokenVerifier | None
    # The fleet counts last read, answered while the database is away.
    last_counts: FleetCounts | None = None
    # The console's files (read at the first request) and its overview with when it was read.
    console_files: StaticFiles = field(default_factory=dict)
    overview: tuple[float, dict[str, Any]] | None = None
    # The OpenAPI document (built at the first request, when every route is in place) and
    # Swagger UI's files.
    openapi: bytes | None = None
    swagger_files: StaticFiles = field(default_factory=dict)

    @classmethod
    def for_settings(cls, settings: Settings) -> Shared:
        token = settings.agent_auth_token
        key = agent_token_key(settings)
        return cls(
            agent_authorization=f"Bearer {token}".encode() if token else None,
            agent_tokens=AgentTokenVerifier(key) if key is not None else None,
        )


def services_of(request: Request) -> Services:
    """The services of the server the request came to."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def shared_of(request: Request) -> Shared:
    shared = request.app.state.shared
    assert isinstance(shared, Shared)
    return shared
