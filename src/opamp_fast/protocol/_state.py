"""Per-agent and per-session protocol state, owned (and kept) by the caller.

``AgentState`` is everything the core must remember about one agent: its last reported
status parts (status compression means the agent omits unchanged parts, so the server
merges) and the remote configuration the operator wants it to run. ``Session`` is what we
told the agent over one WebSocket connection, or across the polls of a plain-HTTP agent.
Neither does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Mapping

from .._proto.opamp.v1 import opamp_pb2 as pb
from ._settings import SettingsOffer

__all__ = [
    "AgentState",
    "Outbox",
    "Session",
    "Transport",
    "build_remote_config",
    "remote_config_hash",
]


class Transport(enum.Enum):
    """How the agent talks to us."""

    WS = "ws"
    HTTP = "http"


def remote_config_hash(files: Mapping[str, tuple[bytes, str]]) -> bytes:
    """sha256 over each file (sorted by name) as length-prefixed name, body, content type.

    The 8-byte length prefixes make the encoding prefix-free, so two different file sets
    can never produce the same hashed byte string.
    """
    h = hashlib.sha256()
    for name in sorted(files):
        body, content_type = files[name]
        for part in (name.encode("utf-8"), bytes(body), content_type.encode("utf-8")):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


def build_remote_config(files: Mapping[str, tuple[bytes, str]]) -> pb.AgentRemoteConfig:
    """Build the ``AgentRemoteConfig`` for ``files`` (name -> (body, content_type)).

    The name may be ``""`` for a single-file config. Build it once and share it between
    agents with :meth:`AgentState.set_remote_config_message` when a fleet runs one config.
    """
    config = pb.AgentRemoteConfig(config_hash=remote_config_hash(files))
    config_map = config.config.config_map
    for name in sorted(files):
        body, content_type = files[name]
        entry = config_map[name]
        entry.body = bytes(body)
        entry.content_type = content_type
    return config


class AgentState:
    """Everything the protocol core remembers about one agent (one per known agent).

    The compressible status parts hold the last value the agent reported, or ``None``
    when it never reported one. They are private copies: treat them as read-only.
    """

    __slots__ = (
        "_packages_available",
        "_packages_hash",
        "_remote_config",
        "_remote_config_hash",
        "available_components",
        "capabilities",
        "connection_settings_status",
        "custom_capabilities",
        "description",
        "effective_config",
        "full_state_pending",
        "full_state_seq",
        "health",
        "instance_uid",
        "offers_epoch",
        "package_statuses",
        "remote_config_status",
        "sequence_num",
        "settings_offer",
        "wire_uid",
    )

    instance_uid: bytes
    wire_uid: bytes
    capabilities: int
    sequence_num: int | None
    description: pb.AgentDescription | None
    health: pb.ComponentHealth | None
    effective_config: pb.EffectiveConfig | None
    remote_config_status: pb.RemoteConfigStatus | None
    package_statuses: pb.PackageStatuses | None
    custom_capabilities: pb.CustomCapabilities | None
    available_components: pb.AvailableComponents | None
    connection_settings_status: pb.ConnectionSettingsStatus | None
    full_state_pending: bool
    full_state_seq: int
    offers_epoch: int
    #: The connection settings this agent should use; None: the server policy's. Set it with
    #: :meth:`set_settings_offer`.
    settings_offer: SettingsOffer | None
    _remote_config: pb.AgentRemoteConfig | None
    _remote_config_hash: bytes | None
    _packages_available: pb.PackagesAvailable | None
    _packages_hash: bytes | None

    def __init__(self, instance_uid: bytes, wire_uid: bytes | None = None) -> None:
        """``instance_uid`` is the normalized 16-byte uid; ``wire_uid`` the bytes the
        agent puts on the wire (a legacy ULID agent sends 26 ASCII bytes), echoed in
        every response. It defaults to ``instance_uid``."""
        if len(instance_uid) != 16:
            raise ValueError(f"instance_uid must be 16 bytes, got {len(instance_uid)}")
        self.instance_uid = instance_uid
        self.wire_uid = instance_uid if wire_uid is None else wire_uid
        self.capabilities = 0
        self.sequence_num = None
        self.description = None
        self.health = None
        self.effective_config = None
        self.remote_config_status = None
        self.package_statuses = None
        self.custom_capabilities = None
        self.available_components = None
        self.connection_settings_status = None
        self.full_state_pending = False
        self.full_state_seq = 0
        # Bumped whenever what the server wants to offer changes, so that a session knows it
        # must build a full reply again instead of the heartbeat fast path's bare ack.
        self.offers_epoch = 0
        self._remote_config = None
        self._remote_config_hash = None
        self._packages_available = None
        self._packages_hash = None
        self.settings_offer = None

    def __repr__(self) -> str:
        return (
            f"AgentState(instance_uid={self.instance_uid.hex()}, "
            f"capabilities=0x{self.capabilities:x}, sequence_num={self.sequence_num})"
        )

    # --- desired remote configuration ---------------------------------------------

    @property
    def remote_config(self) -> pb.AgentRemoteConfig | None:
        """The configuration we want the agent to run, or ``None``. Read-only."""
        return self._remote_config

    @property
    def remote_config_hash(self) -> bytes | None:
        """``remote_config.config_hash``, or ``None`` when no config is assigned."""
        return self._remote_config_hash

    def set_remote_config(self, files: Mapping[str, tuple[bytes, str]]) -> bytes:
        """Assign the desired config (name -> (body, content_type)); return its hash.

        An empty mapping clears the assignment and returns ``b""``.
        """
        if not files:
            self.clear_remote_config()
            return b""
        config = build_remote_config(files)
        self.set_remote_config_message(config)
        return bytes(config.config_hash)

    def set_remote_config_message(self, config: pb.AgentRemoteConfig) -> None:
        """Assign a prebuilt config (see :func:`build_remote_config`); it may be shared
        between agents and must not be mutated afterwards."""
        if not config.config_hash:
            raise ValueError("AgentRemoteConfig.config_hash must be set")
        self._remote_config = config
        self._remote_config_hash = config.config_hash
        self.offers_epoch += 1

    def clear_remote_config(self) -> None:
        """Forget the desired config; nothing more is offered (the agent keeps its own)."""
        self._remote_config = None
        self._remote_config_hash = None
        self.offers_epoch += 1

    # --- desired packages -----------------------------------------------------------

    @property
    def packages_available(self) -> pb.PackagesAvailable | None:
        """The packages we want the agent to have, or ``None``. Read-only."""
        return self._packages_available

    @property
    def packages_hash(self) -> bytes | None:
        """``packages_available.all_packages_hash``, or ``None`` when nothing is offered."""
        return self._packages_hash

    def set_packages_available(self, offer: pb.PackagesAvailable) -> None:
        """Assign a prebuilt offer (it may be shared between agents and must not be mutated
        afterwards). Offered to agents reporting AcceptsPackages, once per session, until the
        agent reports ``server_provided_all_packages_hash`` equal to its hash (as remote
        config). Assigning the offer already held changes nothing."""
        if not offer.all_packages_hash:
            raise ValueError("PackagesAvailable.all_packages_hash must be set")
        if self._packages_hash == offer.all_packages_hash:
            self._packages_available = offer  # same content (fresher download URLs)
            return
        self._packages_available = offer
        self._packages_hash = offer.all_packages_hash
        self.offers_epoch += 1

    def clear_packages_available(self) -> None:
        """Offer nothing any more (the agent keeps what it installed)."""
        if self._packages_hash is None:
            return
        self._packages_available = None
        self._packages_hash = None
        self.offers_epoch += 1

    # --- connection settings ------------------------------------------------------------

    def set_settings_offer(self, offer: SettingsOffer | None) -> bool:
        """Offer these connection settings (None: the server policy's); True when that is a
        change. Offered per :meth:`SettingsOffer.pick`, once per session and whenever their
        hash changes, unless the agent reports that hash."""
        if offer is self.settings_offer:
            return False
        self.settings_offer = offer
        self.offers_epoch += 1
        return True


class Outbox:
    """What the server holds for one session until it can be sent: a Restart command and
    custom messages (oldest first). A plain-HTTP agent gets them with its next polls (a command
    in a reply of its own, a custom message per reply); a WebSocket agent at once, by push.
    It lives and dies with its session: nothing is kept for an agent that went away."""

    __slots__ = ("messages", "restart")

    def __init__(self) -> None:
        self.restart = False
        self.messages: deque[pb.CustomMessage] = deque()

    def __bool__(self) -> bool:
        return self.restart or bool(self.messages)


class Session:
    """What we told the agent on one WebSocket connection, or across an HTTP agent's polls.

    For plain HTTP the caller keeps one ``Session`` per agent between polls (until the
    agent is considered offline), so "first response" means the first poll it answers.
    """

    __slots__ = (
        "custom_capabilities_sent",
        "first_response_sent",
        "offered_config_hash",
        "offered_packages_hash",
        "offered_settings_hash",
        "outbox",
        "settled_epoch",
        "transport",
    )

    transport: Transport
    first_response_sent: bool
    settled_epoch: int
    offered_config_hash: bytes | None
    offered_packages_hash: bytes | None
    offered_settings_hash: bytes | None
    custom_capabilities_sent: tuple[str, ...] | None
    outbox: Outbox | None

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.first_response_sent = False
        self.offered_config_hash = None
        self.offered_packages_hash = None
        self.offered_settings_hash = None
        self.custom_capabilities_sent = None
        self.outbox = None  # a command or custom messages waiting to be sent (``Outbox``)
        # The agent's offers_epoch at the last WebSocket reply that had nothing left to offer;
        # -1 until then. Equal to the agent's current epoch: a heartbeat needs a bare ack only.
        self.settled_epoch = -1

    def __repr__(self) -> str:
        return (
            f"Session(transport={self.transport.value}, "
            f"first_response_sent={self.first_response_sent})"
        )
