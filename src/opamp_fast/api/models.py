"""Response shapes of the REST API as msgspec Structs: one definition for encoder and schema.

The handlers build these Structs and ``JSONResponse`` encodes them with msgspec; ``openapi.py``
derives the OpenAPI component schemas from the very same classes with
``msgspec.json.schema_components``, so the documented shape cannot drift from the served one.
Times are ``datetime`` objects in UTC, which msgspec encodes as RFC 3339 with a ``Z`` suffix.
Field order follows the seed report's examples (``id``, ``name``, ``status``, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from .command_models import COMMAND_STRUCTS
from .config_models import CONFIG_STRUCTS, RemoteConfigState
from .connection_models import CONNECTION_STRUCTS, AgentConnectionSettings
from .lifecycle_models import LIFECYCLE_STRUCTS
from .package_models import PACKAGE_STRUCTS, AgentPackages

Status = Literal["online", "offline"]
TransportName = Literal["ws", "http"]


class ErrorDetail(msgspec.Struct):
    """What went wrong: a stable machine-readable ``code`` and a message for humans."""

    code: str
    message: str


class ErrorResponse(msgspec.Struct):
    """Every error of the API, whatever the status code."""

    error: ErrorDetail


class AgentSummary(msgspec.Struct):
    """One agent in a list."""

    id: str
    name: str | None
    status: Status
    transport: TransportName | None
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    # Since when its effective config differs from the one it reported with APPLIED (drift).
    drifted_at: datetime | None = None


class AgentList(msgspec.Struct):
    """A page of agents sorted by id. ``next_cursor`` continues after the last item (keyset
    pagination); it is ``null`` on the last page."""

    agents: list[AgentSummary]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class ConnectionHistory(msgspec.Struct):
    """One connection (WebSocket, or a run of HTTP polls) of an agent."""

    id: int
    agent_id: str
    connected_at: datetime
    disconnected_at: datetime | None
    duration_seconds: float | None
    disconnect_reason: str | None
    remote_addr: str | None
    transport: TransportName
    serving_instance: str


class ConnectionHistoryPage(msgspec.Struct):
    """A page of an agent's connections, newest first."""

    histories: list[ConnectionHistory]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


class ActiveConnection(msgspec.Struct):
    """The live connection of an online agent, wherever it is (``serving_instance``)."""

    agent_id: str
    connected_at: datetime
    transport: TransportName
    remote_addr: str
    last_seen_at: datetime
    duration_seconds: float
    serving_instance: str


class StatusCounts(msgspec.Struct):
    online: int
    offline: int


class TransportCounts(msgspec.Struct):
    ws: int
    http: int


class StatusSummary(msgspec.Struct):
    """Fleet-wide counts, the same from every instance, as of the last committed flushes
    (``counts_as_of``, the database's clock); ``instances`` running instances contributed."""

    total: int
    online: int
    offline: int
    status_counts: StatusCounts
    online_by_transport: TransportCounts
    counts_as_of: datetime | None
    instances: int


class DisconnectAccepted(msgspec.Struct):
    """The disconnect was handed to the instance holding the agent's connection."""

    agent_id: str
    serving_instance: str
    status: Literal["disconnecting"] = "disconnecting"


class AgentDetail(msgspec.Struct):
    """Everything known about one agent, from its stored row (``source``: always
    ``"database"``, the same from every instance)."""

    id: str
    name: str | None
    status: Status
    source: Literal["live", "database"]
    transport: TransportName | None
    remote_addr: str | None
    serving_instance: str | None
    capabilities: list[str]
    capabilities_bits: int
    description: dict[str, Any] | None
    health: dict[str, Any] | None
    effective_config: dict[str, Any] | None
    remote_config_status: dict[str, Any] | None
    labels: dict[str, Any]
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    created_at: datetime | None
    updated_at: datetime | None
    # The effective remote config assignment and the agent's outcome.
    remote_config: RemoteConfigState | None = None
    # Offered packages and the agent's last PackageStatuses report.
    packages: AgentPackages | None = None
    # Offered connection settings (own telemetry, OpAMP), their status, the certificate.
    connection_settings: AgentConnectionSettings | None = None
    # Day-2: the last Restart command sent to it, the custom capabilities it declared, the
    # components it reported (``{"hash", "components": {"receivers": {...}, ...}}``).
    last_restart_requested_at: datetime | None = None
    custom_capabilities: list[str] | None = None
    available_components: dict[str, Any] | None = None
    # Configuration drift: since when the effective config differs from ``applied_config_hash``,
    # the one it ran when it reported APPLIED for its remote config (docs/api.md).
    drifted_at: datetime | None = None
    applied_config_hash: str | None = None


RESPONSE_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    ErrorResponse,
    DisconnectAccepted,
    AgentList,
    ConnectionHistoryPage,
    ActiveConnection,
    StatusSummary,
    AgentDetail,
    *CONFIG_STRUCTS,
    *PACKAGE_STRUCTS,
    *CONNECTION_STRUCTS,
    *COMMAND_STRUCTS,
    *LIFECYCLE_STRUCTS,
)
