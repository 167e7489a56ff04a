"""Response shapes of agent lifecycle (forgetting) and availability."""

from __future__ import annotations

from datetime import datetime

import msgspec


class AgentForgotten(msgspec.Struct):
    """The agent is forgotten on every instance: its row, labels, pin, package offers and
    statuses are gone (and its history too when ``history_deleted`` counts it)."""

    agent_id: str
    history_deleted: int
    forgotten: bool = True


class OnlineStretch(msgspec.Struct):
    """A stretch of time the agent was online, inside the window; ``ended_by`` is the reason
    its session ended (``null``: it went on past the window's end)."""

    start: datetime
    end: datetime
    ended_by: str | None


class AgentAvailabilityReport(msgspec.Struct):
    """One agent's availability in ``[since, until]``, from its connection history.

    ``observed_seconds`` is the part of the window after the agent's first connection, over
    which ``uptime_ratio`` (``online_seconds / observed_seconds``, ``null`` when nothing was
    observed) is taken; ``mean_session_seconds`` is ``online_seconds / sessions``;
    ``flapping``: at least ``min_disconnects`` disconnects. ``timeline`` lists the online
    stretches (the newest 500; ``timeline_truncated`` when there were more)."""

    agent_id: str
    since: datetime
    until: datetime
    first_seen_at: datetime | None
    observed_seconds: float
    uptime_ratio: float | None
    online_seconds: float
    sessions: int
    disconnects: int
    disconnects_by_reason: dict[str, int]
    longest_offline_seconds: float
    mean_session_seconds: float | None
    flapping: bool
    min_disconnects: int
    timeline: list[OnlineStretch]
    timeline_truncated: bool


class VersionAvailabilityInfo(msgspec.Struct):
    """The agents reporting one ``service.version`` (``null``: none reported)."""

    version: str | None
    agents: int
    uptime_ratio: float | None
    disconnects: int


class FlappingAgentInfo(msgspec.Struct):
    id: str
    name: str | None
    disconnects: int
    uptime_ratio: float | None


class UptimePoint(msgspec.Struct):
    """One part of the window: the mean uptime of the agents observed in it."""

    since: datetime
    until: datetime
    agents: int
    uptime_ratio: float | None


class FleetAvailabilityReport(msgspec.Struct):
    """The fleet's (or the filtered agents') availability in ``[since, until]``.

    ``uptime_ratio`` is the mean of the agents' own ratios (each agent counts once, whatever its
    number of sessions); ``agents`` counts those observed in the window. ``flapping`` lists the
    agents with at least ``min_disconnects`` disconnects, the worst first (most disconnects,
    then by id), a page at a time (``next_cursor``); ``flapping_total`` counts them all.
    ``series`` (with ``buckets``) cuts the window in equal parts."""

    since: datetime
    until: datetime
    agents: int
    uptime_ratio: float | None
    disconnects: int
    disconnects_by_reason: dict[str, int]
    by_version: list[VersionAvailabilityInfo]
    min_disconnects: int
    flapping: list[FlappingAgentInfo]
    flapping_total: int
    limit: int
    offset: int
    next_cursor: str | None
    series: list[UptimePoint]


LIFECYCLE_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    AgentForgotten,
    AgentAvailabilityReport,
    FleetAvailabilityReport,
)
