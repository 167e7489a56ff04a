"""What the handlers of one Starlette app reach through the request.

``build_starlette`` puts the server's :class:`~opamp_fast.services.Services` on
``app.state.services`` and a new :class:`Shared` on ``app.state.shared``: what is built once per
app and used by every request (credentials, caches, files read once), held by the app rather
than by the modules, so that two apps (a test may build one beside a running server) never
see each other's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..auth import AgentTokenVerifier, agent_token_key
from ..services import Services
from ..settings import Settings
from ..storage.queries import FleetCounts
from .components import ComponentCache

StaticFiles = dict[str, tuple[bytes, str]]  # file name -> (content, media type)


class AgentRate:
    """A token bucket per agent: ``per_s`` sends a second, bursts of ``burst_s`` seconds'
    worth (as agents' own messages are limited); 0 disables it. Buckets that refilled are
    forgotten, so it holds only agents sent to within the last ``burst_s`` seconds."""

    def __init__(self, per_s: float, burst_s: float = 10.0) -> None:
        self.per_s = per_s
        self.capacity = per_s * burst_s
        self._buckets: dict[bytes, tuple[float, float]] = {}  # uid -> (tokens, at)

    def take(self, uid: bytes, now: float | None = None) -> bool:
        """One send to ``uid``: False when over the rate."""
        if self.per_s <= 0:
            return True
        now = time.monotonic() if now is None else now
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        tokens, at = self._buckets.get(uid, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.per_s)
        if tokens < 1:
            return False
        self._buckets[uid] = (tokens - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        full = [
            uid
            for uid, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.per_s >= self.capacity
        ]
        for uid in full:
            del self._buckets[uid]


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
    # Component types parsed from config versions and reported component sets.
    components: ComponentCache = field(default_factory=ComponentCache)
    # Custom messages to one agent (``max_agent_messages_per_s``, as agents' own messages).
    send_rate: AgentRate = field(default_factory=lambda: AgentRate(0.0))

    @classmethod
    def for_settings(cls, settings: Settings) -> Shared:
        token = settings.agent_auth_token
        key = agent_token_key(settings)
        return cls(
            agent_authorization=f"Bearer {token}".encode() if token else None,
            agent_tokens=AgentTokenVerifier(key) if key is not None else None,
            send_rate=AgentRate(settings.max_agent_messages_per_s),
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
