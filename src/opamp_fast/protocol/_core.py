"""The OpAMP server rules: merge one ``AgentToServer`` into the agent's state, answer it.

Pure functions over caller-owned state (``AgentState``, ``Session``) and an immutable
``ServerPolicy``; no I/O, no clocks (``now`` is passed in and only stamps events), no
randomness (``new_uid`` is passed in). See docs/protocol.md for the rules in prose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .._proto.opamp.v1 import opamp_pb2 as pb
from ._constants import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_ACCEPTS_PACKAGES,
    AGENT_ACCEPTS_REMOTE_CONFIG,
    AGENT_ACCEPTS_RESTART_COMMAND,
    AGENT_FLAG_REQUEST_INSTANCE_UID,
    AGENT_REPORTS_AVAILABLE_COMPONENTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    SERVER_ACCEPTS_EFFECTIVE_CONFIG,
    SERVER_ACCEPTS_PACKAGES_STATUS,
    SERVER_ACCEPTS_STATUS,
    SERVER_CAPABILITIES_MASK,
    SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS,
    SERVER_FLAG_REPORT_FULL_STATE,
    SERVER_OFFERS_CONNECTION_SETTINGS,
    SERVER_OFFERS_PACKAGES,
    SERVER_OFFERS_REMOTE_CONFIG,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    AgentConnected,
    AgentDisconnected,
    CustomMessageReceived,
    Event,
    FullStateRequested,
    InstanceUidReassigned,
    MessageMerged,
    RemoteConfigStatusChanged,
    StatusChanged,
    fast_frozen_init,
)
from ._settings import SettingsOffer, SettingsParts
from ._state import AgentState, Outbox, Session, Transport
from .codec import STATUS_PARTS

__all__ = [
    "DEFAULT_SERVER_CAPABILITIES",
    "NotAccepted",
    "Reply",
    "ServerPolicy",
    "build_push",
    "check_bounds",
    "declared_custom_capabilities",
    "error_response",
    "process_heartbeat",
    "process_message",
    "queue_custom_message",
    "queue_restart",
]

#: AcceptsStatus | OffersRemoteConfig | AcceptsEffectiveConfig | AcceptsPackagesStatus |
#: OffersConnectionSettings = 0x37.
DEFAULT_SERVER_CAPABILITIES = (
    SERVER_ACCEPTS_STATUS
    | SERVER_OFFERS_REMOTE_CONFIG
    | SERVER_ACCEPTS_EFFECTIVE_CONFIG
    | SERVER_OFFERS_CONNECTION_SETTINGS
    | SERVER_ACCEPTS_PACKAGES_STATUS
)


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """What this server offers; immutable, shared by all connections.

    ``settings_offer`` is the connection-settings offer of an agent that has none of its own
    (``AgentState.settings_offer``): ``heartbeat_interval_seconds`` only, always non-zero (an
    offer left at 0 would disable the agent's heartbeats). ``connection_settings`` and
    ``connection_settings_hash`` are what it sends an agent accepting OpAMP connection settings.
    """

    capabilities: int = DEFAULT_SERVER_CAPABILITIES
    heartbeat_interval_s: int = 30
    custom_capabilities: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: What one agent may make the server keep: an AgentDescription of at most this many
    #: encoded bytes and attributes, and any other stored status part of at most
    #: ``max_status_part_bytes`` (a message over it is refused, nothing of it is kept).
    max_description_bytes: int = 64 * 1024
    max_description_attributes: int = 1024
    max_status_part_bytes: int = 1024 * 1024
    #: The largest ``CustomMessage`` (encoded) an agent may send; a message carrying a larger
    #: one is refused like an oversized status part.
    max_custom_message_bytes: int = 64 * 1024
    settings_offer: SettingsOffer = field(init=False, repr=False, compare=False)
    connection_settings: pb.ConnectionSettingsOffers = field(init=False, repr=False, compare=False)
    connection_settings_hash: bytes = field(init=False, repr=False, compare=False)
    #: The smallest of the bounds ``check_bounds`` applies: a message no larger is not looked at.
    smallest_bound: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        caps = self.capabilities
        if not caps & SERVER_ACCEPTS_STATUS:
            raise ValueError("server capabilities must include AcceptsStatus (0x1)")
        if caps & ~SERVER_CAPABILITIES_MASK:
            raise ValueError(f"undefined server capability bits in 0x{caps:x}")
        if not isinstance(self.heartbeat_interval_s, int) or self.heartbeat_interval_s < 1:
            raise ValueError("heartbeat_interval_s must be a positive integer")
        for name in (
            "max_message_bytes",
            "max_description_bytes",
            "max_description_attributes",
            "max_status_part_bytes",
            "max_custom_message_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        custom = tuple(self.custom_capabilities)
        if not all(isinstance(c, str) and c for c in custom):
            raise ValueError("custom_capabilities must be non-empty strings")
        object.__setattr__(self, "custom_capabilities", custom)
        smallest = min(self.max_description_bytes, self.max_custom_message_bytes)
        object.__setattr__(self, "smallest_bound", smallest)
        opamp = pb.OpAMPConnectionSettings(heartbeat_interval_seconds=self.heartbeat_interval_s)
        offer = SettingsOffer(SettingsParts(opamp))
        variant = offer.pick(AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS)
        assert variant is not None
        object.__setattr__(self, "settings_offer", offer)
        object.__setattr__(self, "connection_settings_hash", variant.hash)
        object.__setattr__(self, "connection_settings", variant.message)


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one ``AgentToServer`` and the events it caused, in order."""

    response: pb.ServerToAgent
    events: tuple[Event, ...]


_M = TypeVar("_M")
_EMPTY: frozenset[str] = frozenset()
_HTTP = Transport.HTTP
_ServerToAgent = pb.ServerToAgent


def _copy(new: _M) -> _M:
    # A private copy: keeping the sub-message itself would pin the whole incoming
    # message (upb arena) and alias a buffer the caller may reuse.
    stored = type(new)()
    stored.CopyFrom(new)  # type: ignore[attr-defined]
    return stored


def process_message(
    agent: AgentState,
    session: Session,
    msg: pb.AgentToServer,
    *,
    policy: ServerPolicy,
    now: float,
    new_uid: Callable[[], bytes],
    duplicate: bool = False,
    allow_new_uid: bool = True,
) -> Reply:
    """Merge ``msg`` into ``agent`` and ``session`` and build the response.

    Every message is answered, duplicates and retries included. ``duplicate=True`` means
    the caller saw this uid live on another connection: the response assigns a new uid
    (as does the agent's ``RequestInstanceUid`` flag, unless ``allow_new_uid`` is False: an
    agent whose credentials are bound to its uid keeps it); the caller re-keys its registry.

    Events come out in this order: AgentConnected, InstanceUidReassigned, MessageMerged,
    StatusChanged, RemoteConfigStatusChanged, FullStateRequested, CustomMessageReceived,
    AgentDisconnected.
    """
    check_bounds(msg, policy)
    uid = agent.instance_uid
    first = not session.first_response_sent
    http = session.transport is _HTTP
    resp = _ServerToAgent()
    resp.instance_uid = agent.wire_uid
    events: list[Event] = []
    if first:
        events.append(AgentConnected(uid, session.transport, now))
    if duplicate or (allow_new_uid and msg.flags & AGENT_FLAG_REQUEST_INSTANCE_UID):
        fresh = new_uid()
        if len(fresh) != 16:
            raise LocalProtocolError(
                f"new_uid() returned {len(fresh)} bytes, not 16", kind="bad_new_uid"
            )
        resp.agent_identification.new_instance_uid = fresh
        events.append(InstanceUidReassigned(uid, fresh, now))
    changed: list[str] = []
    flags = _merge_status(agent, session, msg, changed)
    disconnect = msg.HasField("agent_disconnect")
    silent = not disconnect and not msg.HasField("agent_description")
    full_state_reason = _check_sequence(agent, session, msg.sequence_num, first, http, silent)
    if full_state_reason is not None:
        flags |= SERVER_FLAG_REPORT_FULL_STATE
    if flags:
        if disconnect:
            flags &= ~SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS
        resp.flags = flags
    if first or http:
        resp.capabilities = policy.capabilities
    if session.outbox is None:  # the common case, inlined: nothing held for the session
        offered = _add_custom_capabilities(resp, session, policy, http)
        if not disconnect:
            offered = _add_offers(resp, agent, session, policy) or offered
        pending = offered or disconnect or http
    else:
        offered = _add_pending(resp, agent, session, policy, disconnect)
        pending = offered or disconnect or http or session.outbox is not None
    session.settled_epoch = -1 if pending else agent.offers_epoch

    merged = frozenset(changed) if changed else _EMPTY
    events.append(MessageMerged(uid, msg.sequence_num, now, merged))
    if changed:
        events.append(StatusChanged(uid, now, merged))
        rcs = agent.remote_config_status
        if rcs is not None and "remote_config_status" in merged:
            events.append(
                RemoteConfigStatusChanged(
                    uid, now, rcs.last_remote_config_hash, rcs.status, rcs.error_message
                )
            )
    if full_state_reason is not None:
        events.append(FullStateRequested(uid, now, full_state_reason))
    if msg.HasField("custom_message"):
        custom = msg.custom_message
        events.append(CustomMessageReceived(uid, now, custom.capability, custom.type, custom.data))
    if disconnect:
        events.append(AgentDisconnected(uid, now, "agent_disconnect"))
    session.first_response_sent = True
    return Reply(resp, tuple(events))


# -- offers: what the server sends once per session, and again while the agent lacks it --
@dataclass(frozen=True, slots=True)
class _Offer:
    """Something the server offers an agent once per session, and again only while the agent
    reports an older one: a remote config, a set of packages."""

    agent_capability: int
    server_capability: int
    desired: Callable[[AgentState], bytes | None]  # the hash to offer, None: nothing
    reported: Callable[[AgentState], bytes | None]  # the hash the agent says it has
    offered: str  # the Session attribute remembering the hash offered on this session
    field: str  # the ServerToAgent field that carries it
    message: Callable[[AgentState], object]

    def add(self, resp: pb.ServerToAgent, agent: AgentState, session: Session, caps: int) -> bool:
        desired = self.desired(agent)
        if (
            desired is None
            or not agent.capabilities & self.agent_capability
            or not caps & self.server_capability
            or getattr(session, self.offered) == desired
            or self.reported(agent) == desired  # the agent has it (even when FAILED): never resend
        ):
            return False
        getattr(resp, self.field).CopyFrom(self.message(agent))
        setattr(session, self.offered, desired)
        return True


def _reported_config(agent: AgentState) -> bytes | None:
    status = agent.remote_config_status
    return None if status is None else status.last_remote_config_hash


def _reported_packages(agent: AgentState) -> bytes | None:
    statuses = agent.package_statuses
    return None if statuses is None else statuses.server_provided_all_packages_hash


_REMOTE_CONFIG_OFFER = _Offer(
    AGENT_ACCEPTS_REMOTE_CONFIG,
    SERVER_OFFERS_REMOTE_CONFIG,
    lambda agent: agent._remote_config_hash,
    _reported_config,
    "offered_config_hash",
    "remote_config",
    lambda agent: agent._remote_config,
)
_PACKAGES_OFFER = _Offer(
    AGENT_ACCEPTS_PACKAGES,
    SERVER_OFFERS_PACKAGES,
    lambda agent: agent._packages_hash,
    _reported_packages,
    "offered_packages_hash",
    "packages_available",
    lambda agent: agent._packages_available,
)
_OFFERS = (_REMOTE_CONFIG_OFFER, _PACKAGES_OFFER)


# -- status compression: what an agent omits is unchanged -----------------------------------
#: A merge takes the agent, its session, the part as sent and the list of changed part names
#: to append to; it returns server flags to set in the reply.
_Merge = Callable[[AgentState, Session, object, list[str]], int]


def _merge_status(
    agent: AgentState, session: Session, msg: pb.AgentToServer, changed: list[str]
) -> int:
    """Merge every status part the message carries (capabilities always); the reply's flags."""
    caps = msg.capabilities
    if caps != agent.capabilities:
        agent.capabilities = caps
        changed.append("capabilities")
    flags = 0
    has = msg.HasField
    for name, merge in _MERGES:
        if has(name):
            flags |= merge(agent, session, getattr(msg, name), changed)
    return flags


def _replace(name: str) -> _Merge:
    """The merge of a part that is simply kept as last reported."""

    def merge(agent: AgentState, session: Session, part: object, changed: list[str]) -> int:
        current = getattr(agent, name)
        if current is None or current != part:
            setattr(agent, name, _copy(part))
            changed.append(name)
        return 0

    return merge


def _merge_description(
    agent: AgentState, session: Session, part: object, changed: list[str]
) -> int:
    _replace_description(agent, session, part, changed)
    agent.full_state_pending = False  # a description is the full state we may have asked for
    return 0


def _merge_offered(name: str, offer: _Offer) -> _Merge:
    """The merge of a part that reports which of our offers the agent has (remote config
    status, package statuses): while it reports another than the one we want it to have, the
    session may offer it once more."""
    replace = _replace(name)

    def merge(agent: AgentState, session: Session, part: object, changed: list[str]) -> int:
        replace(agent, session, part, changed)
        desired = offer.desired(agent)
        if desired is not None and offer.reported(agent) != desired:
            setattr(session, offer.offered, None)
        return 0

    return merge


def _merge_available_components(
    agent: AgentState, session: Session, part: object, changed: list[str]
) -> int:
    available: pb.AvailableComponents = part  # type: ignore[assignment]
    if len(available.components):
        _replace_available_components(agent, session, part, changed)
        return 0
    known = agent.available_components
    if (known is None or known.hash != available.hash) and (
        agent.capabilities & AGENT_REPORTS_AVAILABLE_COMPONENTS
    ):
        return SERVER_FLAG_REPORT_AVAILABLE_COMPONENTS  # a hash we do not hold: ask for the list
    return 0


_replace_description = _replace("description")
_replace_available_components = _replace("available_components")

#: Every status part an AgentToServer may carry, in the order they are merged.
_MERGES: tuple[tuple[str, _Merge], ...] = (
    ("agent_description", _merge_description),
    ("health", _replace("health")),
    ("effective_config", _replace("effective_config")),
    ("remote_config_status", _merge_offered("remote_config_status", _REMOTE_CONFIG_OFFER)),
    ("package_statuses", _merge_offered("package_statuses", _PACKAGES_OFFER)),
    ("custom_capabilities", _replace("custom_capabilities")),
    ("available_components", _merge_available_components),
    ("connection_settings_status", _replace("connection_settings_status")),
)


def _check_sequence(
    agent: AgentState, session: Session, seq: int, first: bool, http: bool, silent: bool
) -> str | None:
    """Track ``sequence_num``; why the full state must be asked for (None: it need not be).
    ``silent``: the message carries neither a description nor a goodbye.

    Asked once per gap or unknown agent, not in a loop: asked again only when that request may
    have been lost (the agent retried the very message we flagged, or reconnected).
    """
    prev = agent.sequence_num
    reason: str | None = None
    if silent:
        if agent.full_state_pending:
            if first or seq == agent.full_state_seq:
                reason = "unknown_agent" if agent.description is None else "sequence_gap"
        elif agent.description is None:
            reason = "unknown_agent"
        elif prev is not None and seq > prev + 1:
            reason = "sequence_gap"
    if reason is not None:
        agent.full_state_pending = True
        agent.full_state_seq = seq
    if http and not first and prev is not None and seq == prev:
        # A plain-HTTP retry (same seq): our previous response may never have arrived,
        # so whatever it offered is offered again.
        session.offered_config_hash = None
        session.offered_packages_hash = None
        session.offered_settings_hash = None
    agent.sequence_num = seq
    return reason


def check_bounds(msg: pb.AgentToServer, policy: ServerPolicy) -> None:
    """Refuse a message whose status parts the server would not keep (see ``ServerPolicy``).

    Raises:
        RemoteProtocolError: ``kind="too_large_state"``; nothing of the message is merged.
    """
    if msg.ByteSize() <= policy.smallest_bound:
        return  # the whole message is smaller than the smallest bound: nothing to look at
    has = msg.HasField
    if has("custom_message"):
        size = msg.custom_message.ByteSize()
        if size > policy.max_custom_message_bytes:
            raise RemoteProtocolError(
                f"custom_message of {size} bytes exceeds what the server takes "
                f"({policy.max_custom_message_bytes} bytes)",
                kind="too_large_state",
            )
    if has("agent_description"):
        description = msg.agent_description
        size = description.ByteSize()
        count = len(description.identifying_attributes) + len(
            description.non_identifying_attributes
        )
        if size > policy.max_description_bytes or count > policy.max_description_attributes:
            raise RemoteProtocolError(
                f"agent_description of {size} bytes and {count} attributes exceeds what the "
                f"server keeps ({policy.max_description_bytes} bytes, "
                f"{policy.max_description_attributes} attributes)",
                kind="too_large_state",
            )
    for name in STATUS_PARTS:
        if has(name):
            size = getattr(msg, name).ByteSize()
            if size > policy.max_status_part_bytes:
                raise RemoteProtocolError(
                    f"{name} of {size} bytes exceeds what the server keeps "
                    f"({policy.max_status_part_bytes} bytes)",
                    kind="too_large_state",
                )


def process_heartbeat(agent: AgentState, session: Session, seq: int, caps: int) -> bool:
    """The fast path of :func:`process_message` for a WebSocket heartbeat.

    For a message holding only ``instance_uid`` (the agent's own), ``sequence_num`` and
    ``capabilities``: returns True, with ``agent.sequence_num`` advanced, when
    :func:`process_message` would answer with the bare ``instance_uid`` and change nothing else
    (same capabilities, the next sequence number, no full state pending, and nothing left to
    offer since the session's last reply). Returns False, changing nothing, otherwise: the caller
    then runs :func:`process_message` on the decoded message. Emits no events; the caller
    accounts the message as merged-without-change.
    """
    prev = agent.sequence_num
    if (
        session.settled_epoch != agent.offers_epoch
        or caps != agent.capabilities
        or prev is None
        or seq != prev + 1
        or agent.full_state_pending
        or agent.description is None
    ):
        return False
    agent.sequence_num = seq
    return True


def _add_custom_capabilities(
    resp: pb.ServerToAgent, session: Session, policy: ServerPolicy, http: bool
) -> bool:
    custom = policy.custom_capabilities
    if http:
        if not custom:
            return False
    elif custom == (session.custom_capabilities_sent or ()):
        return False
    resp.custom_capabilities.capabilities.extend(custom)
    resp.custom_capabilities.SetInParent()  # an emptied list is still sent (WS)
    session.custom_capabilities_sent = custom
    return True


def _add_offers(
    resp: pb.ServerToAgent, agent: AgentState, session: Session, policy: ServerPolicy
) -> bool:
    """Add the pending remote config, packages and connection settings the agent can take."""
    server_caps = policy.capabilities
    added = False
    for offer in _OFFERS:
        added = offer.add(resp, agent, session, server_caps) or added
    if server_caps & SERVER_OFFERS_CONNECTION_SETTINGS:
        added = _add_settings(resp, agent, session, policy) or added
    return added


def _add_settings(
    resp: pb.ServerToAgent, agent: AgentState, session: Session, policy: ServerPolicy
) -> bool:
    """The agent's connection settings, as far as its capabilities take them: once per session,
    again when they change, never while the agent reports their hash. A certificate not
    delivered yet goes out whatever the hashes say, once (the offer then forgets it)."""
    offer = agent.settings_offer or policy.settings_offer
    variant = offer.pick(agent.capabilities)
    if variant is None:
        return False
    digest = variant.hash
    if variant.certificate:
        agent.settings_offer = offer.delivered()
    else:
        if session.offered_settings_hash == digest:
            return False
        session.offered_settings_hash = digest
        status = agent.connection_settings_status
        if status is not None and status.last_connection_settings_hash == digest:
            return False
    session.offered_settings_hash = digest
    resp.connection_settings.CopyFrom(variant.message)
    return True


def build_push(
    agent: AgentState, session: Session, *, policy: ServerPolicy
) -> pb.ServerToAgent | None:
    """A server-initiated WebSocket message carrying whatever is pending, or ``None``.

    Pending means: the desired remote config or packages (same rule as in
    :func:`process_message`), changed connection settings, changed custom capabilities, what
    the session's :class:`Outbox` holds. A Restart command goes alone (the spec allows only
    ``instance_uid`` and ``capabilities`` beside it), a custom message one per message: call it
    again until it returns ``None``. Always ``None`` for plain HTTP (those agents get it in
    their next poll's response) and before the session's first response (which must carry the
    server capabilities).
    """
    if session.transport is _HTTP or not session.first_response_sent:
        return None
    resp = _ServerToAgent(instance_uid=agent.wire_uid)
    outbox = session.outbox
    if outbox is not None and _take_command(resp, outbox, agent):
        _settle_outbox(session, outbox)
        return resp
    added = _add_offers(resp, agent, session, policy)
    added = _add_custom_capabilities(resp, session, policy, False) or added
    if outbox is not None:
        added = _take_custom_message(resp, outbox) or added
        _settle_outbox(session, outbox)
    return resp if added else None


# -- what the server holds for a session: a Restart command, custom messages ----------------
class NotAccepted(ValueError):
    """The agent cannot take what the server would send (it lacks the capability, or too much
    already waits for it); nothing was queued. ``code`` is a stable label."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def declared_custom_capabilities(agent: AgentState) -> tuple[str, ...]:
    """The custom capabilities the agent reported (``CustomCapabilities``)."""
    custom = agent.custom_capabilities
    return () if custom is None else tuple(custom.capabilities)


def _outbox_of(session: Session) -> Outbox:
    outbox = session.outbox
    if outbox is None:
        outbox = session.outbox = Outbox()
    session.settled_epoch = -1  # the heartbeat fast path never answers while something waits
    return outbox


def queue_restart(agent: AgentState, session: Session) -> None:
    """Hold a Restart command for ``session``: pushed by :func:`build_push` (WebSocket) or sent
    in the reply to the next poll (plain HTTP), in a message of its own.

    Raises:
        NotAccepted: ``code="restart_not_supported"``: the agent does not report
        AcceptsRestartCommand (0x400).
    """
    if not agent.capabilities & AGENT_ACCEPTS_RESTART_COMMAND:
        raise NotAccepted(
            "the agent does not accept restart commands (no AcceptsRestartCommand capability)",
            code="restart_not_supported",
        )
    _outbox_of(session).restart = True


def queue_custom_message(
    agent: AgentState, session: Session, message: pb.CustomMessage, *, max_pending: int
) -> None:
    """Hold a ``CustomMessage`` for ``session`` (sent like a command, one per message, after
    those queued before it). The message must not be mutated afterwards.

    Raises:
        NotAccepted: ``code="capability_not_declared"`` when the agent did not report the
        message's capability in its ``CustomCapabilities``; ``code="too_many_pending"`` when
        ``max_pending`` messages already wait for the session.
    """
    if message.capability not in declared_custom_capabilities(agent):
        raise NotAccepted(
            f"the agent did not declare the custom capability {message.capability!r}",
            code="capability_not_declared",
        )
    outbox = session.outbox
    if outbox is not None and len(outbox.messages) >= max_pending:
        raise NotAccepted(
            f"{max_pending} custom messages already wait for this agent's next poll",
            code="too_many_pending",
        )
    _outbox_of(session).messages.append(message)


def _take_command(resp: pb.ServerToAgent, outbox: Outbox, agent: AgentState) -> bool:
    """Put the held Restart command in ``resp`` (which carries nothing else yet)."""
    if not outbox.restart:
        return False
    outbox.restart = False
    if not agent.capabilities & AGENT_ACCEPTS_RESTART_COMMAND:
        return False  # the agent stopped accepting it meanwhile: dropped
    resp.command.type = pb.CommandType_Restart
    resp.command.SetInParent()
    return True


def _take_custom_message(resp: pb.ServerToAgent, outbox: Outbox) -> bool:
    if not outbox.messages:
        return False
    resp.custom_message.CopyFrom(outbox.messages.popleft())
    return True


def _settle_outbox(session: Session, outbox: Outbox) -> None:
    if not outbox:
        session.outbox = None


def _add_pending(
    resp: pb.ServerToAgent,
    agent: AgentState,
    session: Session,
    policy: ServerPolicy,
    disconnect: bool,
) -> bool:
    """Add to a reply what the session has not been sent yet; True when something was added.

    A held Restart command goes in a reply of its own (nothing else but the uid and the
    capabilities), unless the reply already asks something of the agent (a flag, a new uid):
    it then waits for the next one. Nothing is offered in the reply to a goodbye.
    """
    outbox = session.outbox
    if outbox is not None and not disconnect:
        if not resp.flags and not resp.HasField("agent_identification"):
            if _take_command(resp, outbox, agent):
                _settle_outbox(session, outbox)
                return True  # offers and messages follow in the next replies
    http = session.transport is _HTTP
    added = _add_custom_capabilities(resp, session, policy, http)
    if disconnect:
        return added
    added = _add_offers(resp, agent, session, policy) or added
    if outbox is not None:
        added = _take_custom_message(resp, outbox) or added
        _settle_outbox(session, outbox)
    return added


def add_offers(
    resp: pb.ServerToAgent, agent: AgentState, session: Session, *, policy: ServerPolicy
) -> bool:
    """Add to an already built reply what became pending after it was built (a config assigned
    once the message said who the agent is). Same rules as :func:`process_message`; True when
    something was added (the session is then no longer settled)."""
    added = _add_offers(resp, agent, session, policy)
    if added:
        session.settled_epoch = -1
    return added


def error_response(
    kind: int,
    message: str,
    *,
    instance_uid: bytes = b"",
    retry_after_s: float | None = None,
) -> pb.ServerToAgent:
    """A ``ServerToAgent`` with ``error_response`` set and nothing else but ``instance_uid``.

    ``kind`` is a ``ServerErrorResponseType`` (``ERROR_BAD_REQUEST``,
    ``ERROR_UNAVAILABLE``...); ``retry_after_s`` becomes ``retry_info`` in nanoseconds.
    """
    resp = _ServerToAgent(instance_uid=instance_uid)
    err = resp.error_response
    err.SetInParent()
    err.type = kind  # type: ignore[assignment]
    err.error_message = message
    if retry_after_s is not None:
        if retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        err.retry_info.retry_after_nanoseconds = round(retry_after_s * 1_000_000_000)
    return resp
