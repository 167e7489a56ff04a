"""Connection-settings offers: what the server tells one agent about its connections.

A :class:`SettingsOffer` is built once from :class:`SettingsParts` (the OpAMP connection, with a
heartbeat interval always set, and the agent's own metrics, traces and logs) and shared by every
agent that gets the same parts; an agent holding a client certificate issued by the server has
an offer of its own (its certificate's serial is part of the hash). What one agent is sent
depends on its capabilities (``opamp`` needs AcceptsOpAMPConnectionSettings, ``own_metrics``
ReportsOwnMetrics, ...): :meth:`SettingsOffer.pick` returns the variant for a capability mask,
built at its first use and cached, so choosing it per message is a dict lookup.

The hash of a variant is the sha256 of its deterministic encoding without the certificate, plus
the serial of the agent's current certificate: it changes whenever what the agent should use
changes, and only then. A certificate rides in one reply only (:meth:`SettingsOffer.delivered`
gives the same offer without it, with the same hashes): the opamp-go client and the Collector's
supervisor reconnect on every offer that carries a certificate, so repeating it would loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .._proto.opamp.v1 import opamp_pb2 as pb
from ._constants import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_REPORTS_OWN_LOGS,
    AGENT_REPORTS_OWN_METRICS,
    AGENT_REPORTS_OWN_TRACES,
)

__all__ = ["SETTINGS_CAPABILITIES", "SettingsOffer", "SettingsParts", "SettingsVariant"]

#: The agent capabilities that decide what of an offer an agent may be sent.
SETTINGS_CAPABILITIES = (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS
    | AGENT_REPORTS_OWN_METRICS
    | AGENT_REPORTS_OWN_TRACES
    | AGENT_REPORTS_OWN_LOGS
)
_OWN = (
    (AGENT_REPORTS_OWN_METRICS, "own_metrics"),
    (AGENT_REPORTS_OWN_TRACES, "own_traces"),
    (AGENT_REPORTS_OWN_LOGS, "own_logs"),
)
_HASH_PREFIX = b"opamp-fast connection settings 1\x00"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class SettingsParts:
    """What is offered, whoever gets it. The messages are never mutated once built. Its repr
    names the parts only: headers hold secrets."""

    opamp: pb.OpAMPConnectionSettings
    own_metrics: pb.TelemetryConnectionSettings | None = None
    own_traces: pb.TelemetryConnectionSettings | None = None
    own_logs: pb.TelemetryConnectionSettings | None = None

    def __post_init__(self) -> None:
        # The opamp-go client applies the interval of any opamp offer: 0 would stop heartbeats.
        if self.opamp.heartbeat_interval_seconds < 1:
            raise ValueError("an OpAMP connection-settings offer needs a heartbeat interval")

    def __repr__(self) -> str:
        present = [n for n in ("own_metrics", "own_traces", "own_logs") if getattr(self, n)]
        return f"SettingsParts(opamp, {', '.join(present) or 'no own telemetry'})"


@dataclass(frozen=True, slots=True)
class SettingsVariant:
    """One agent's view of an offer: its hash, the message, and whether it carries a
    certificate (then it is sent regardless of hashes, once)."""

    hash: bytes
    message: pb.ConnectionSettingsOffers
    certificate: bool


class SettingsOffer:
    """The settings one agent (or every agent sharing ``parts``) should use; see the module
    docstring. ``serial`` names the agent's current certificate; ``certificate`` is one issued
    and not yet delivered."""

    __slots__ = ("_variants", "certificate", "parts", "serial")

    def __init__(
        self,
        parts: SettingsParts,
        *,
        serial: bytes = b"",
        certificate: pb.TLSCertificate | None = None,
    ) -> None:
        self.parts = parts
        self.serial = serial
        self.certificate = certificate
        self._variants: dict[int, SettingsVariant | None] = {}

    @property
    def heartbeat_interval_s(self) -> int:
        return int(self.parts.opamp.heartbeat_interval_seconds)

    def pick(self, capabilities: int) -> SettingsVariant | None:
        """What an agent with these capabilities is offered; None: nothing it can take."""
        key = capabilities & SETTINGS_CAPABILITIES
        try:
            return self._variants[key]
        except KeyError:
            variant = self._variants[key] = self._build(key)
            return variant

    def delivered(self) -> SettingsOffer:
        """The same offer once its certificate went out: same hashes, no certificate."""
        return SettingsOffer(self.parts, serial=self.serial)

    def _build(self, key: int) -> SettingsVariant | None:
        parts = self.parts
        offers = pb.ConnectionSettingsOffers()
        opamp = bool(key & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS)
        if opamp:
            offers.opamp.CopyFrom(parts.opamp)
        for bit, name in _OWN:
            part = getattr(parts, name)
            if part is not None and key & bit:
                getattr(offers, name).CopyFrom(part)
        if not offers.ListFields():
            return None
        digest = hashlib.sha256(
            _HASH_PREFIX
            + offers.SerializeToString(deterministic=True)
            + (self.serial if opamp else b"")
        ).digest()
        offers.hash = digest
        carries = opamp and self.certificate is not None
        if carries:
            offers.opamp.certificate.CopyFrom(self.certificate)
        return SettingsVariant(digest, offers, carries)
