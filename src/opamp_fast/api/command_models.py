"""Response shapes of day-2 commands (restarts, custom messages) and component checks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

#: How a command reaches the agent: ``pushed`` (over its WebSocket, now), ``next_poll`` (held
#: for the next poll of a plain-HTTP agent), ``routed`` (sent to the instance holding it, which
#: pushes it or holds it likewise).
Delivery = Literal["pushed", "next_poll", "routed"]


class RestartAccepted(msgspec.Struct):
    """The Restart command is on its way to the agent."""

    agent_id: str
    serving_instance: str
    delivery: Delivery
    requested_at: datetime


class CustomMessageAccepted(msgspec.Struct):
    """The custom message is on its way to the agent (``id``: its entry in the agent's list)."""

    agent_id: str
    id: int
    serving_instance: str
    delivery: Delivery


class CustomMessageInfo(msgspec.Struct):
    """One custom message, from the agent (``from_agent``) or to it (``to_agent``, with the
    operator who sent it). ``data`` is base64."""

    id: int
    direction: Literal["from_agent", "to_agent"]
    at: datetime
    capability: str
    type: str
    size: int
    data: str
    serving_instance: str | None
    sent_by: str | None


class CustomMessageList(msgspec.Struct):
    """The agent's kept custom messages (the newest 100 each way), newest first."""

    agent_id: str
    messages: list[CustomMessageInfo]


class GroupRestartInfo(msgspec.Struct):
    """A restart of a group's members in batches: ``targets`` (the members online and
    accepting restarts when it started), each batch ``batch_percent`` of them, ``pause_s``
    apart; ``requested`` were sent the command, ``skipped`` had gone offline (or stopped
    accepting restarts) when their batch came. ``state``: ``running``, ``completed`` or
    ``cancelled``."""

    id: int
    group: str
    state: Literal["running", "completed", "cancelled"]
    batch_percent: int
    pause_s: int
    targets: int
    batches: int
    requested: int
    skipped: int
    progress_percent: float
    next_batch_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    ended_by: str | None


class GroupComponents(msgspec.Struct):
    """Whether the group's members could take its config: members whose reported components
    include every component type the config names (``compatible``), members that lack some
    (``incompatible``), members that never reported their components (``unreported``: not
    checked, never refused)."""

    config: str
    compatible: int
    incompatible: int
    unreported: int


class AgentMissing(msgspec.Struct):
    """One agent that lacks component types a config names, by kind."""

    id: str
    missing: dict[str, list[str]]


class ComponentsMissingDetail(msgspec.Struct):
    code: str
    message: str
    config: str
    agents: list[AgentMissing]
    agents_total: int


class ComponentsMissingError(msgspec.Struct):
    """422 ``components_missing``: the config names component types some targeted agents lack
    (the first 100 of them listed); ``?force=true`` assigns it anyway."""

    error: ComponentsMissingDetail


COMMAND_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    RestartAccepted,
    CustomMessageAccepted,
    CustomMessageList,
    GroupRestartInfo,
    ComponentsMissingError,
)

__all__ = [
    "COMMAND_STRUCTS",
    "AgentMissing",
    "ComponentsMissingError",
    "CustomMessageAccepted",
    "CustomMessageInfo",
    "CustomMessageList",
    "GroupComponents",
    "GroupRestartInfo",
    "RestartAccepted",
]
