"""Events emitted by the protocol core, consumed by the registry, persistence and metrics.

All are frozen, slotted dataclasses. ``at`` is the caller-supplied wall-clock time (UNIX
seconds) of the message that caused the event; the core never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from ._state import Transport

__all__ = [
    "AgentConnected",
    "AgentDisconnected",
    "CustomMessageReceived",
    "Event",
    "FullStateRequested",
    "InstanceUidReassigned",
    "MessageMerged",
    "RemoteConfigStatusChanged",
    "StatusChanged",
]

_C = TypeVar("_C", bound=type[Any])


def fast_frozen_init(cls: _C) -> _C:
    """Give a frozen, slotted dataclass a faster ``__init__`` (same signature).

    A frozen dataclass's generated ``__init__`` assigns every field through
    ``object.__setattr__``, which costs ~150 ns per field; events are built on the
    per-message hot path. This ``__init__`` stores straight into the slot descriptors.
    Equality, hashing, repr and immutability are the dataclass's own, unchanged. Only for
    classes whose fields have no defaults and no ``__post_init__``.
    """
    names = [f.name for f in fields(cls)]
    env = {f"_set_{name}": cls.__dict__[name].__set__ for name in names}
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names) or "    pass\n"
    namespace: dict[str, Any] = {}
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", env, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init
    return cls


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class AgentConnected:
    """First message of a session (a WebSocket connection, or an HTTP agent's first poll)."""

    instance_uid: bytes
    transport: Transport
    at: float


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class MessageMerged:
    """Every message, after status compression was merged into the ``AgentState``.

    ``changed`` names the parts that changed (see :class:`StatusChanged`); usually empty.
    """

    instance_uid: bytes
    sequence_num: int
    at: float
    changed: frozenset[str]


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class StatusChanged:
    """Some stored part of the agent's status actually changed.

    ``changed`` is a subset of ``{"description", "capabilities", "health",
    "effective_config", "remote_config_status", "package_statuses", "custom_capabilities",
    "available_components", "connection_settings_status"}``.
    """

    instance_uid: bytes
    at: float
    changed: frozenset[str]


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class RemoteConfigStatusChanged:
    """The agent reported a different ``RemoteConfigStatus`` (``status`` is the enum int)."""

    instance_uid: bytes
    at: float
    config_hash: bytes
    status: int
    error_message: str


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class AgentDisconnected:
    """The agent said goodbye (``reason="agent_disconnect"``); mark it offline now."""

    instance_uid: bytes
    at: float
    reason: str


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class InstanceUidReassigned:
    """The response carries ``agent_identification.new_instance_uid = new_uid``.

    Emitted when the agent asked (``RequestInstanceUid``) or the caller flagged a duplicate
    uid. The caller re-keys its registry; the core only reports.
    """

    old_uid: bytes
    new_uid: bytes
    at: float


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class FullStateRequested:
    """The response carries ``ReportFullState``; ``reason`` is ``"unknown_agent"`` or
    ``"sequence_gap"``."""

    instance_uid: bytes
    at: float
    reason: str


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class CustomMessageReceived:
    """The message carried a ``CustomMessage`` (its size within the policy's bound). Custom
    messages are not status: nothing of them is kept in the agent's state."""

    instance_uid: bytes
    at: float
    capability: str
    type: str
    data: bytes


Event: TypeAlias = (
    AgentConnected
    | MessageMerged
    | StatusChanged
    | RemoteConfigStatusChanged
    | AgentDisconnected
    | InstanceUidReassigned
    | FullStateRequested
    | CustomMessageReceived
)
