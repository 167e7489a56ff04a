"""Response shapes of the package routes, as msgspec Structs (see ``models.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

PackageType = Literal["top_level", "addon"]


class PackageVersion(msgspec.Struct):
    """One uploaded version of a package. ``sha256`` is the file's content hash (hex),
    computed by the server while the upload streamed; ``signature`` the detached signature
    uploaded with it (base64), offered to agents as ``DownloadableFile.signature``."""

    name: str
    version: str
    type: PackageType
    size_bytes: int
    sha256: str
    signature: str | None
    created_at: datetime | None


class PackageSummary(msgspec.Struct):
    """A package name with its newest version (semantic-version order, releases first)."""

    name: str
    latest_version: str
    versions: int


class PackageList(msgspec.Struct):
    """Every package name, sorted."""

    packages: list[PackageSummary]


class PackageVersionList(msgspec.Struct):
    """The versions of one package, newest first by semantic-version precedence."""

    name: str
    versions: list[PackageVersion]


class AgentPackageStatus(msgspec.Struct):
    """One entry of the agent's last ``PackageStatuses`` report (hashes in hex)."""

    name: str
    status: str  # installed | install_pending | installing | install_failed | downloading
    agent_has_version: str
    agent_has_hash: str
    server_offered_version: str
    server_offered_hash: str
    error_message: str
    download_percent: float | None
    updated_at: datetime | None


class AgentPackages(msgspec.Struct):
    """What the agent is offered and what it last reported. ``all_packages_hash`` is the hash
    of the offer (hex); the agent has received it when ``server_provided_all_packages_hash``
    equals it. Reports are written within a flush (``flush_interval_s``)."""

    agent_id: str
    offered: list[PackageVersion]
    all_packages_hash: str | None
    server_provided_all_packages_hash: str | None
    error_message: str | None
    reported_at: datetime | None
    statuses: list[AgentPackageStatus]


class PackageVersionStatus(msgspec.Struct):
    """Agents by status for one version: ``offered`` agents are assigned it; ``counts`` come
    from their reports (by the version offered, or the one installed)."""

    version: str
    offered: int
    counts: dict[str, int]


class PackageFailure(msgspec.Struct):
    agent_id: str
    version: str
    error_message: str
    updated_at: datetime | None


class PackageStatusSummary(msgspec.Struct):
    """Install status of one package across the fleet; ``failures``: the 100 newest."""

    name: str
    versions: list[PackageVersionStatus]
    failures: list[PackageFailure]


PACKAGE_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    PackageVersion,
    PackageList,
    PackageVersionList,
    AgentPackages,
    PackageStatusSummary,
)
