"""Agent packages: registry, storage backends, signed URLs, semantic versions.

See :mod:`.registry` for how offers reach agents and statuses come back, :mod:`.store` for the
filesystem and S3 backends, ``api/packages.py`` for the REST and download routes.
"""

from __future__ import annotations

import logging
import secrets
import socket
from typing import TYPE_CHECKING

from .registry import PackageInfo as PackageInfo
from .registry import PackageRegistry as PackageRegistry
from .registry import PackageStatistics as PackageStatistics
from .semver import SemVer as SemVer
from .semver import parse_semver as parse_semver
from .signing import URLSigner as URLSigner
from .store import PackageStore as PackageStore
from .store import StoreError as StoreError
from .store import open_store as open_store

if TYPE_CHECKING:
    from ..fleet.handler import FleetHandler
    from ..fleet.registry import Registry
    from ..settings import Settings
    from ..storage import Database

__all__ = [
    "PackageInfo",
    "PackageRegistry",
    "PackageStatistics",
    "PackageStore",
    "SemVer",
    "StoreError",
    "URLSigner",
    "build_package_registry",
    "open_store",
    "parse_semver",
    "public_base_url",
]

logger = logging.getLogger(__name__)


def public_base_url(settings: Settings) -> str:
    """Where agents reach this server: ``public_url``, else derived from host and port."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = "https" if settings.tls_cert_file is not None else "http"
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.port}"


def url_signing_key(settings: Settings) -> bytes:
    if settings.package_url_secret:
        return settings.package_url_secret.encode()
    from ..auth import agent_token_key

    key = agent_token_key(settings)
    if key is not None:
        return key.encode()
    logger.warning(
        "no package_url_secret and no agent-token key: download URLs are signed with a random "
        "key of this process (other instances will refuse them)"
    )
    return secrets.token_bytes(32)


def build_package_registry(
    settings: Settings, *, db: Database, registry: Registry, fleet: FleetHandler
) -> PackageRegistry:
    store = open_store(
        settings.package_store,
        default_root=settings.data_dir.parent / "packages",
        endpoint_url=settings.package_s3_endpoint_url,
        region=settings.package_s3_region,
        access_key_id=settings.package_s3_access_key_id,
        secret_access_key=settings.package_s3_secret_access_key,
    )
    logger.info("package store: %s", store.describe())
    return PackageRegistry(
        db=db,
        store=store,
        signer=URLSigner(url_signing_key(settings)),
        registry=registry,
        fleet=fleet,
        instance_id=settings.instance_id,
        base_url=public_base_url(settings),
        url_ttl_s=settings.package_url_ttl_s,
        max_bytes=settings.package_max_bytes,
        flush_interval_s=settings.flush_interval_s,
    )
