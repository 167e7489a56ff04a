"""Response shapes of configuration management (configs, groups, rollouts, audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from .command_models import GroupComponents


class ConfigRef(msgspec.Struct):
    """One version of one config."""

    name: str
    version: int


class ConfigFile(msgspec.Struct):
    body: str
    content_type: str


class ConfigVersionInfo(msgspec.Struct):
    """A version of a config (``hash``: the OpAMP config hash, hex)."""

    name: str
    version: int
    hash: str
    size_bytes: int
    created_at: datetime
    created_by: str


class ConfigVersionDetail(ConfigVersionInfo):
    """A version of a config with its files."""

    files: dict[str, ConfigFile]


class ConfigCreated(msgspec.Struct):
    """The version holding the posted files; ``created`` is false when an identical one existed."""

    created: bool
    version: ConfigVersionDetail


class ConfigSummary(msgspec.Struct):
    name: str
    latest_version: int
    versions: int
    hash: str
    updated_at: datetime


class ConfigList(msgspec.Struct):
    """Every config, by name."""

    configs: list[ConfigSummary]


class ConfigDetail(msgspec.Struct):
    """A config's versions, newest first."""

    name: str
    versions: list[ConfigVersionInfo]


class ConfigDeleted(msgspec.Struct):
    """The config and all its versions were deleted."""

    name: str
    deleted_versions: int


class VersionStatus(msgspec.Struct):
    version: int
    hash: str
    applied: int = 0
    applying: int = 0
    failed: int = 0
    unset: int = 0


class FailureSignature(msgspec.Struct):
    version: int
    error: str
    agents: int


class ConfigStatus(msgspec.Struct):
    """Agents reporting each version of a config, by status, and their failure messages."""

    name: str
    totals: dict[str, int]
    versions: list[VersionStatus]
    errors: list[FailureSignature]


class RolloutInfo(msgspec.Struct):
    """A progressive rollout of a group from one version to another."""

    id: int
    state: str
    to: ConfigRef
    batch_percent: int
    max_failed_percent: int
    batches: int
    eligible: int
    admitted: int
    applied: int
    failed: int
    pending: int
    progress_percent: float
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    source: ConfigRef | None = msgspec.field(name="from", default=None)


class GroupPackage(msgspec.Struct):
    """A package version a group offers its members."""

    name: str
    version: str


class GroupInfo(msgspec.Struct):
    """A group: its selector, the version its members run, the packages it offers them
    (members with an offer of their own get theirs instead), and its latest rollout."""

    name: str
    selector: dict[str, str]
    config: ConfigRef | None
    previous: ConfigRef | None
    members: int
    online_members: int
    rollout: RolloutInfo | None
    created_at: datetime
    updated_at: datetime
    packages: list[GroupPackage] = msgspec.field(default_factory=list)
    # Whether the members could take the group's config (their reported components).
    components: GroupComponents | None = None
    # Seconds after which the group's short-lived members are forgotten once offline (null:
    # the fleet's --forget-offline-after-days).
    forget_offline_after: int | None = None


class GroupList(msgspec.Struct):
    """Every group, by name."""

    groups: list[GroupInfo]


class GroupDeleted(msgspec.Struct):
    name: str
    deleted: bool = True


class AgentLabels(msgspec.Struct):
    """An agent's operator labels."""

    agent_id: str
    labels: dict[str, str]


class RemoteConfigState(msgspec.Struct):
    """The agent's effective assignment and what it reported for it.

    ``status``: ``applied``, ``applying``, ``failed`` (with ``error``), ``pending`` (assigned,
    not reported yet) or ``unassigned``. ``source``: ``pin`` or ``group`` (``group`` names it).
    """

    name: str | None
    version: int | None
    hash: str | None
    status: str
    error: str | None
    updated_at: datetime | None
    source: str | None
    group: str | None
    reported_hash: str | None


class AgentAssignment(msgspec.Struct):
    """An agent's pinned config and its effective assignment."""

    agent_id: str
    pinned: ConfigRef | None
    remote_config: RemoteConfigState


class AuditRecord(msgspec.Struct):
    """One change (or refused change) made through the API or the CLI."""

    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    outcome: str
    before: Any
    after: Any
    request_id: str | None
    client_addr: str | None


class AuditPage(msgspec.Struct):
    """Newest first; follow ``next_cursor`` for older entries (``null`` on the last page)."""

    entries: list[AuditRecord]
    limit: int
    next_cursor: str | None


CONFIG_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    ConfigCreated,
    ConfigList,
    ConfigDetail,
    ConfigVersionDetail,
    ConfigDeleted,
    ConfigStatus,
    GroupInfo,
    GroupList,
    GroupDeleted,
    AgentLabels,
    AgentAssignment,
    AuditPage,
)
