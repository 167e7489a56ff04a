"""Response shapes of the connection-settings routes, as msgspec Structs (see ``models.py``).

Header values are secrets: every shape here shows them as ``<redacted>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

#: What became of an offer: the agent's ``ConnectionSettingsStatus`` for the offered hash
#: (``applied``, ``applying``, ``failed``), ``pending`` (offered, not reported for this hash),
#: ``not_reported`` (the agent does not report ConnectionSettingsStatus), ``not_supported``
#: (settings the agent's capabilities do not take), ``none`` (nothing offered).
OfferStatus = Literal[
    "applied", "applying", "failed", "pending", "not_reported", "not_supported", "none"
]

Source = Literal["group", "agent", "server"]


class TelemetryTarget(msgspec.Struct):
    """Where the agent sends one signal of its own telemetry (OTLP/HTTP URL of the signal)."""

    endpoint: str
    headers: dict[str, str]
    tls_ca_pem: str | None = None


class OpampTarget(msgspec.Struct):
    """The agent's OpAMP connection: a new server URL (null: unchanged), headers, and the
    heartbeat interval (null: the server's)."""

    endpoint: str | None
    headers: dict[str, str]
    heartbeat_interval_seconds: int | None


class SettingsBody(msgspec.Struct):
    """Settings as stored for a group or an agent (header values redacted)."""

    telemetry: dict[str, TelemetryTarget]
    opamp: OpampTarget | None


class GroupConnectionSettings(msgspec.Struct):
    """A group's connection settings; empty ``telemetry`` and null ``opamp``: none."""

    group: str
    telemetry: dict[str, TelemetryTarget]
    opamp: OpampTarget | None


class OfferedPart(msgspec.Struct):
    """One part of the agent's offer (``opamp``, ``metrics``, ``traces``, ``logs``): what is
    offered (null endpoint: none, or unchanged for ``opamp``), where it comes from, and what
    the agent made of it."""

    endpoint: str | None
    headers: dict[str, str]
    source: Source | None
    status: OfferStatus
    heartbeat_interval_seconds: int | None = None  # opamp only


class ReportedSettingsStatus(msgspec.Struct):
    """The agent's last ``ConnectionSettingsStatus`` (hash in hex)."""

    hash: str
    status: str  # UNSET, APPLIED, APPLYING, FAILED
    error_message: str
    reported_at: datetime


class CertificateInfo(msgspec.Struct):
    """The client certificate last issued to the agent (serial in hex). ``expiring``: it
    expires within 14 days (the metric counts these)."""

    serial: str
    not_before: datetime
    not_after: datetime
    origin: Literal["csr", "rotation"]
    issued_at: datetime
    issued_by: str
    expiring: bool


class AgentConnectionSettings(msgspec.Struct):
    """What the agent is offered and what it reported: per part the offered endpoint and
    status, the offer's hash (for the agent's capabilities), its own override, and its
    certificate."""

    agent_id: str
    group: str | None
    offered_hash: str | None
    status: OfferStatus
    reported: ReportedSettingsStatus | None
    opamp: OfferedPart
    metrics: OfferedPart
    traces: OfferedPart
    logs: OfferedPart
    override: SettingsBody | None
    certificate: CertificateInfo | None


class RotationAccepted(msgspec.Struct):
    """The rotation was handed to the instance holding the agent."""

    agent_id: str
    serving_instance: str


CONNECTION_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    GroupConnectionSettings,
    AgentConnectionSettings,
    RotationAccepted,
)
