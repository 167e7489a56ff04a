"""``/api/packages...`` (the registry), ``/api/agents/{id}/packages`` (offers) and the download
route ``/v1/packages/{name}/{version}/file``.

* **Upload** (``POST /api/packages``, multipart): parsed incrementally as the body arrives
  (python-multipart's push parser, ``uploads.py``); the file part is spooled to a staging file
  in 1 MiB writes and hashed (SHA-256) in the same worker-thread call, so a 1 GiB package is
  never in memory and the event loop never hashes. Beyond ``package_max_bytes``: 413 at once (from
  ``Content-Length`` when declared). A declared ``sha256`` that does not match: 400
  ``hash_mismatch``, and nothing is stored. Only a complete, verified file is handed to the
  store, then recorded.
* **Download**: ``Content-Length``, ``ETag`` (the SHA-256), one ``Range`` (206, or 416 when
  unsatisfiable; several ranges get the whole file), ``If-Range``, ``If-None-Match``. Authorised
  by the signed expiring URL of the offer, or by agent credentials (the shared agent token or a
  per-agent token). File and object-store reads run in worker threads, 1 MiB at a time, with
  the socket's flow control as back-pressure: downloads never block the OpAMP event loop.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import anyio
import psycopg
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..packages.registry import (
    MAX_NAME_CHARS,
    NAME_PATTERN,
    PackageInfo,
    PackageRegistry,
    all_packages_hash,
    q_agent_statuses,
    q_all,
    q_delete,
    q_get,
    q_insert,
    q_offered_count,
    q_offering_groups,
    q_package_status,
    q_versions,
    validate_name,
    validate_version,
)
from ..packages.semver import MAX_VERSION_CHARS, SEMVER_PATTERN, parse_semver
from ..packages.store import StoreError
from ..protocol.codec import format_instance_uid
from ..storage import queries
from ..storage.config_queries import append_audit
from ..strictint import parse_ascii_int
from .audit import entry as audit_entry
from .body import read_object
from .errors import APIError, agent_not_found, invalid_parameter
from .package_models import (
    AgentPackages,
    AgentPackageStatus,
    PackageFailure,
    PackageList,
    PackageStatusSummary,
    PackageSummary,
    PackageVersion,
    PackageVersionList,
    PackageVersionStatus,
)
from .params import AGENT_ID_PARAM, Param, path_agent_id
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of, shared_of
from .uploads import MAX_SIGNATURE_BYTES, Upload, receive_upload

logger = logging.getLogger(__name__)

SHA256_PATTERN = "^[0-9a-fA-F]{64}$"
_HEX64 = re.compile(SHA256_PATTERN)
SIGNATURE_PATTERN = "^[0-9a-f]{64}$"  # an HMAC-SHA256 in hex, as URLSigner writes it
_SIGNATURE = re.compile(SIGNATURE_PATTERN)
MAX_EXPIRES_DIGITS = 12

NAME_SCHEMA = {"type": "string", "maxLength": MAX_NAME_CHARS, "pattern": NAME_PATTERN}
VERSION_SCHEMA = {"type": "string", "maxLength": MAX_VERSION_CHARS, "pattern": SEMVER_PATTERN}
NAME_PARAM = Param(
    "name",
    "path",
    "Package name: letters, digits, '.', '_', '-' (1-128), starting with a letter or digit, "
    "no '..'.",
    NAME_SCHEMA,
)
VERSION_PARAM = Param(
    "version", "path", "Semantic version (MAJOR.MINOR.PATCH[-pre][+build]).", VERSION_SCHEMA
)
EXPIRES_PARAM = Param(
    "expires",
    "query",
    "Expiry of a signed URL (UNIX seconds); required with `signature`.",
    {"type": "integer", "minimum": 0, "maximum": 10**MAX_EXPIRES_DIGITS - 1},
)
PACKAGE_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME_SCHEMA,
        "version": {"anyOf": [VERSION_SCHEMA, {"const": "latest"}], "default": "latest"},
    },
}
PACKAGES_SCHEMA = {
    "type": "array",
    "items": PACKAGE_REF,
    "description": "One entry per package name (a name listed twice is a 400).",
}
OFFER_BODY = {
    "type": "object",
    "required": ["packages"],
    "additionalProperties": False,
    "properties": {"packages": PACKAGES_SCHEMA},
}
UPLOAD_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "file"],
    "additionalProperties": False,
    "properties": {
        "name": NAME_SCHEMA,
        "version": VERSION_SCHEMA,
        "type": {"enum": ["top_level", "addon"], "default": "top_level"},
        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
        "signature": {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "description": f"A detached signature, at most {MAX_SIGNATURE_BYTES} bytes.",
        },
        "sha256": {
            "type": "string",
            "pattern": SHA256_PATTERN,
            "description": "The file's SHA-256; another one is a 400 `hash_mismatch`.",
        },
    },
}
SIGNATURE_PARAM = Param(
    "signature",
    "query",
    "HMAC-SHA256 of a signed URL, in hex.",
    {"type": "string", "pattern": SIGNATURE_PATTERN},
)


def version_model(info: PackageInfo) -> PackageVersion:
    return PackageVersion(
        name=info.name,
        version=info.version,
        type=info.type,  # type: ignore[arg-type]
        size_bytes=info.size_bytes,
        sha256=info.sha256.hex(),
        signature=base64.b64encode(info.signature).decode() if info.signature else None,
        created_at=info.created_at,
    )


def latest_of(infos: list[PackageInfo]) -> PackageInfo | None:
    """The newest release by semantic version; the newest pre-release when there is none."""
    if not infos:
        return None
    ordered = sorted(infos, key=lambda i: parse_semver(i.version), reverse=True)
    releases = [i for i in ordered if not parse_semver(i.version).prerelease]
    return (releases or ordered)[0]


def agent_packages(uid: bytes, raw: dict[str, Any], infos: list[PackageInfo]) -> AgentPackages:
    return AgentPackages(
        agent_id=format_instance_uid(uid),
        offered=[version_model(i) for i in infos],
        all_packages_hash=all_packages_hash(infos).hex() if infos else None,
        server_provided_all_packages_hash=raw["server_provided_all_packages_hash"],
        error_message=raw["error_message"],
        reported_at=raw["reported_at"],
        statuses=[AgentPackageStatus(**s) for s in raw["statuses"]],
    )


async def load_agent_packages(registry: PackageRegistry, uid: bytes) -> AgentPackages:
    def fetch(conn: psycopg.Connection[Any]) -> tuple[dict[str, Any], list[PackageInfo]]:
        raw = q_agent_statuses(conn, uid)
        infos = [q_get(conn, o["name"], o["version"]) for o in raw["offered"]]
        return raw, [i for i in infos if i is not None]

    raw, infos = await registry.db.read(fetch)
    return agent_packages(uid, raw, infos)


def parse_wanted(items: list[Any], what: str = "packages") -> list[tuple[str, str]]:
    """``[{"name": ..., "version": ... | "latest"}]`` -> (name, version), validated (400)."""
    wanted: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) - {"name", "version"}:
            raise invalid_parameter(f"{what}[{i}]", "must be {name, version}")
        name, version = item.get("name"), item.get("version", "latest")
        if not isinstance(name, str) or validate_name(name) is not None:
            raise invalid_parameter(f"{what}[{i}].name", validate_name(str(name)) or "")
        if not isinstance(version, str) or (
            version != "latest" and validate_version(version) is not None
        ):
            raise invalid_parameter(
                f"{what}[{i}].version", "must be a semantic version or 'latest'"
            )
        if any(n == name for n, _ in wanted):
            raise invalid_parameter(f"{what}[{i}].name", f"{name} is listed twice")
        wanted.append((name, version))
    return wanted


def resolve_wanted(
    conn: psycopg.Connection[Any], wanted: list[tuple[str, str]], *, lock: bool = False
) -> list[PackageInfo]:
    """The versions named (``latest`` resolved now), or 404 ``package_not_found``. ``lock``
    holds their rows (FOR KEY SHARE) until commit: a delete waits, then sees the offer."""
    infos = []
    for name, version in wanted:
        if version == "latest":
            info = latest_of(q_versions(conn, name))
            if info is not None and lock:
                info = q_get(conn, name, info.version, lock="FOR KEY SHARE")
        else:
            info = q_get(conn, name, version, lock="FOR KEY SHARE" if lock else "")
        if info is None:
            raise _not_found(name, None if version == "latest" else version)
        infos.append(info)
    return infos


def _checked_name(name: str) -> str:
    why = validate_name(name)
    if why is not None:
        raise invalid_parameter("name", why)
    return name


def _checked_version(version: str) -> str:
    why = validate_version(version)
    if why is not None:
        raise invalid_parameter("version", why)
    return version


def _path_name(request: Request) -> str:
    return _checked_name(request.path_params["name"])


def _path_name_version(request: Request) -> tuple[str, str]:
    name = request.path_params["name"]
    version = request.path_params["version"]
    return _checked_name(name), _checked_version(version)


def signed_url_params(params: QueryParams) -> tuple[int, str]:
    """``expires`` and ``signature`` of a signed download URL, well formed, else a 400 (403
    without ``expires``: not a signed URL at all)."""
    raw = params.get("expires")
    if raw is None:
        raise APIError(403, "forbidden", "the signed URL has no expiry")
    expires = parse_ascii_int(raw, max_digits=MAX_EXPIRES_DIGITS)
    if expires is None:
        raise invalid_parameter(
            "expires", f"{raw[:20]!r} is not UNIX seconds (1 to {MAX_EXPIRES_DIGITS} digits)"
        )
    signature = params["signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise invalid_parameter("signature", "must be 64 lowercase hex digits")
    return expires, signature


def _not_found(name: str, version: str | None = None) -> APIError:
    what = name if version is None else f"{name} {version}"
    return APIError(404, "package_not_found", f"no package {what}")


# ------------------------------------------------------------------------------- download


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive for one satisfiable range; None to send the whole file (no
    range, several ranges, or not bytes); ``"unsatisfiable"`` for a 416."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.strip().partition("-"))
    if not dash:
        return None
    if first == "":
        suffix = parse_ascii_int(last, max_digits=19)
        if suffix is None:
            return None
        if suffix <= 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
    start = parse_ascii_int(first, max_digits=19)
    end = parse_ascii_int(last, max_digits=19) if last else size - 1
    if start is None or end is None:
        return None
    if start >= size:
        return "unsatisfiable"
    if end < start:
        return None  # syntactically invalid: ignored (RFC 9110 14.1.1)
    return start, min(end, size - 1)


def _content_disposition(info: PackageInfo) -> str:
    return f'attachment; filename="{info.name}-{info.version}"'


# ------------------------------------------------------------------------------- routes


def _registry(request: Request) -> PackageRegistry:
    registry = services_of(request).packages
    assert registry is not None  # without one, build_starlette leaves these routes out
    return registry


def _exists(name: str, version: str) -> APIError:
    return APIError(409, "package_exists", f"package {name} {version} already exists")


def _checked_upload(received: Upload) -> tuple[PackageInfo, Path]:
    """The package version an upload describes, and its spooled file; else a 400."""
    fields = received.fields
    name = fields.get("name", "")
    version = fields.get("version", "")
    kind = fields.get("type", "top_level")
    for field, value in (("name", name), ("version", version)):
        if not value:
            raise invalid_parameter(field, "is required")
    _checked_name(name)
    _checked_version(version)
    if kind not in ("top_level", "addon"):
        raise invalid_parameter("type", "must be top_level or addon")
    if received.path is None:
        raise invalid_parameter("file", "is required (a file part named 'file')")
    digest = received.sha256.digest()
    declared = fields.get("sha256")
    if declared is not None:
        if not _HEX64.fullmatch(declared):
            raise invalid_parameter("sha256", "must be 64 hex digits")
        if not hmac.compare_digest(bytes.fromhex(declared), digest):
            raise APIError(
                400,
                "hash_mismatch",
                f"the file's SHA-256 is {digest.hex()}, not the declared {declared.lower()}"
                "; nothing was stored",
            )
    storage_key = f"{name}/{version}/{digest.hex()}"
    signature = received.signature or None
    info = PackageInfo(name, version, kind, received.size, digest, signature, storage_key)
    return info, received.path


async def _store_upload(request: Request, received: Upload) -> PackageInfo:
    """Put a checked upload in the store, then record it (with its audit row)."""
    info, path = _checked_upload(received)
    name, version = info.name, info.version
    db = services_of(request).db
    if await db.run(lambda conn: q_get(conn, name, version)) is not None:
        raise _exists(name, version)
    try:
        await anyio.to_thread.run_sync(_registry(request).store.put, info.storage_key, path)
    except StoreError as exc:
        logger.warning("package store refused %s %s: %s", name, version, exc)
        raise APIError(503, "store_unavailable", str(exc)) from None
    after = {"type": info.type, "size_bytes": info.size_bytes, "sha256": info.sha256.hex()}
    entry = audit_entry(request, "package.upload", f"package:{name}@{version}", after=after)

    def insert(conn: psycopg.Connection[Any]) -> PackageInfo:
        stored = q_insert(conn, info)
        append_audit(conn, entry)
        return stored

    try:
        return await db.run(insert)
    except psycopg.errors.UniqueViolation:
        raise _exists(name, version) from None


async def _versions(request: Request) -> tuple[str, list[PackageInfo]]:
    """The package of the path and its versions, newest first; 404 when it has none."""
    name = _path_name(request)
    infos = await services_of(request).db.run(lambda conn: q_versions(conn, name))
    if not infos:
        raise _not_found(name)
    return name, infos


router = Router(tags=("packages",))

PACKAGE_ERRORS = (400, 404, 503)
NAME, VER = "$response.body#/name", "$response.body#/version"


@router.post(
    "/api/packages",
    Operation(
        "Upload a package version",
        "multipart/form-data: `name`, `version` (semantic version), `type` (`top_level` "
        "or `addon`, default `top_level`), `file`, optional `signature` (a detached "
        "signature, offered to agents as is) and optional `sha256` (hex; a mismatch is "
        "refused with 400 `hash_mismatch` and nothing is stored). Streamed: never held "
        "in memory. 413 beyond `package_max_bytes`; 409 `package_exists`.",
        response=PackageVersion,
        errors=(400, 403, 409, 413, 503),
        status=201,
        body=UPLOAD_BODY,
        body_media_type="multipart/form-data",
        links={
            **links(["package_versions", "latest_package", "package_status"], name=NAME),
            **links(["get_package_version", "delete_package_version"], name=NAME, version=VER),
        },
    ),
)
async def upload_package(request: Request) -> Response:
    require_role(request, "operator", action="package.upload", target="package")
    registry = _registry(request)
    staging = await anyio.to_thread.run_sync(registry.store.staging_dir)
    parts = UPLOAD_BODY["properties"]
    received = await receive_upload(request, staging, registry.max_bytes, parts)
    try:
        stored = await _store_upload(request, received)
    finally:
        received.discard()
    logger.info("package %s %s uploaded (%d bytes)", stored.name, stored.version, stored.size_bytes)
    return JSONResponse(version_model(stored), 201)


@router.get(
    "/api/packages",
    Operation(
        "List packages",
        "Every package name with its newest version (newest release by semantic "
        "version; the newest pre-release when there is no release).",
        response=PackageList,
        errors=(503,),
    ),
)
async def list_packages(request: Request) -> Response:
    infos = await services_of(request).db.run(q_all)
    by_name: dict[str, list[PackageInfo]] = {}
    for info in infos:
        by_name.setdefault(info.name, []).append(info)
    out = []
    for name in sorted(by_name):
        latest = latest_of(by_name[name])
        assert latest is not None
        out.append(PackageSummary(name, latest.version, len(by_name[name])))
    return JSONResponse(PackageList(out))


@router.get(
    "/api/packages/{name}",
    Operation(
        "Versions of a package",
        "Newest first by semantic-version precedence.",
        params=(NAME_PARAM,),
        response=PackageVersionList,
        errors=PACKAGE_ERRORS,
    ),
)
async def package_versions(request: Request) -> Response:
    name, infos = await _versions(request)
    return JSONResponse(PackageVersionList(name, [version_model(i) for i in infos]))


@router.get(
    "/api/packages/{name}/latest",
    Operation(
        "Newest version of a package",
        "The newest release by semantic version (the newest pre-release when there is no release).",
        params=(NAME_PARAM,),
        response=PackageVersion,
        errors=PACKAGE_ERRORS,
    ),
)
async def latest_package(request: Request) -> Response:
    _, infos = await _versions(request)
    info = latest_of(infos)
    assert info is not None
    return JSONResponse(version_model(info))


def _status_summary(
    name: str, infos: list[PackageInfo], raw: dict[str, Any]
) -> PackageStatusSummary:
    known = [i.version for i in infos]
    extra = [v for v in (*raw["offered"], *raw["counts"]) if v not in known and v]
    rows = [
        PackageVersionStatus(
            version=version,
            offered=int(raw["offered"].get(version, 0)),
            counts=raw["counts"].get(version, {}),
        )
        for version in [*known, *sorted(set(extra))]
    ]
    failures = [
        PackageFailure(
            agent_id=uid_text or format_instance_uid(bytes(uid)),
            version=version,
            error_message=message,
            updated_at=at,
        )
        for uid_text, uid, version, message, at in raw["failures"]
    ]
    return PackageStatusSummary(name, rows, failures)


@router.get(
    "/api/packages/{name}/status",
    Operation(
        "Install status of a package across the fleet",
        "Per version: agents offered it, and agents by reported status (`installed`, "
        "`installing`, `downloading`, `install_pending`, `install_failed`); the newest "
        "failures with their error messages.",
        params=(NAME_PARAM,),
        response=PackageStatusSummary,
        errors=PACKAGE_ERRORS,
    ),
)
async def package_status(request: Request) -> Response:
    name = _path_name(request)

    def fetch(conn: psycopg.Connection[Any]) -> tuple[list[PackageInfo], dict[str, Any]]:
        # one snapshot for all its statements: a flush of reports committing between the
        # counts and the failures made them disagree (a failure listed, not counted)
        return q_versions(conn, name), q_package_status(conn, name)

    infos, raw = await services_of(request).db.read(fetch)
    if not infos and not raw["counts"]:
        raise _not_found(name)
    return JSONResponse(_status_summary(name, infos, raw))


@router.get(
    "/api/packages/{name}/{version}",
    Operation(
        "One package version",
        params=(NAME_PARAM, VERSION_PARAM),
        response=PackageVersion,
        errors=PACKAGE_ERRORS,
    ),
)
async def get_package_version(request: Request) -> Response:
    name, version = _path_name_version(request)
    info = await services_of(request).db.run(lambda conn: q_get(conn, name, version))
    if info is None:
        raise _not_found(name, version)
    return JSONResponse(version_model(info))


@router.delete(
    "/api/packages/{name}/{version}",
    Operation(
        "Delete a package version",
        "204; 409 `package_offered` while any agent or group offers it.",
        params=(NAME_PARAM, VERSION_PARAM),
        errors=(400, 403, 404, 409, 503),
        status=204,
        extra_responses={"204": {"description": "Deleted."}},
    ),
)
async def delete_package_version(request: Request) -> Response:
    name, version = _path_name_version(request)
    target = f"package:{name}@{version}"
    require_role(request, "operator", action="package.delete", target=target)
    entry = audit_entry(request, "package.delete", target)

    def delete(conn: psycopg.Connection[Any]) -> tuple[PackageInfo | None, int, list[str]]:
        # Locked first: a group assigning it (FOR KEY SHARE) commits before we look.
        q_get(conn, name, version, lock="FOR UPDATE")
        offered = q_offered_count(conn, name, version)
        groups = q_offering_groups(conn, name, version)
        if offered or groups:
            return None, offered, groups
        info = q_delete(conn, name, version)
        if info is not None:
            append_audit(conn, entry)
        return info, 0, []

    try:
        info, offered, groups = await services_of(request).db.run(delete)
    except psycopg.errors.ForeignKeyViolation:  # offered between our check and the delete
        info, offered, groups = None, 1, []
    if offered or groups:
        by = [f"{offered} agent(s)"] if offered else []
        if groups:
            by.append("group(s) " + ", ".join(groups))
        raise APIError(
            409,
            "package_offered",
            f"package {name} {version} is offered to {' and '.join(by)}; withdraw the offers first",
        )
    if info is None:
        raise _not_found(name, version)
    try:
        await anyio.to_thread.run_sync(_registry(request).store.delete, info.storage_key)
    except Exception:  # the row is gone; a leftover object is only space
        logger.warning("could not delete %s from the package store", info.storage_key)
    return Response(status_code=204)


@router.get(
    "/api/agents/{id}/packages",
    Operation(
        "The agent's packages",
        "What the agent is offered and its last PackageStatuses report; 404 for an "
        "agent never seen and offered nothing.",
        params=(AGENT_ID_PARAM,),
        response=AgentPackages,
        errors=(400, 404, 503),
    ),
)
async def get_agent_packages(request: Request) -> Response:
    uid = path_agent_id(request)
    shown = await load_agent_packages(_registry(request), uid)
    if not shown.offered and shown.reported_at is None:
        if not await services_of(request).db.run(lambda conn: queries.agent_exists(conn, uid)):
            raise agent_not_found(uid)
    return JSONResponse(shown)


@router.put(
    "/api/agents/{id}/packages",
    Operation(
        "Offer packages to an agent",
        'Body `{"packages": [{"name", "version"}]}` (a version may be `"latest"`, '
        "resolved now); replaces the agent's offers (`[]` withdraws them). Agents "
        "reporting AcceptsPackages receive `packages_available` at once over WebSocket, "
        "with their next poll over HTTP, on whichever instance holds them. The agent "
        "need not have connected yet. 404 `package_not_found`.",
        params=(AGENT_ID_PARAM,),
        response=AgentPackages,
        errors=(400, 403, 404, 409, 413, 503),
        body=OFFER_BODY,
        links=links(["get_agent_packages"], id="$request.path.id"),
    ),
)
async def set_agent_packages(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "operator", action="agent.packages.set", target=target)
    body = await read_object(request, 64 * 1024)
    unknown = set(body) - {"packages"}
    if unknown or not isinstance(body.get("packages"), list):
        raise APIError(
            400,
            "invalid_body",
            'expected {"packages": [{"name": ..., "version": ... | "latest"}, ...]}',
        )
    wanted = parse_wanted(body["packages"])
    db = services_of(request).db
    infos = await db.run(lambda conn: resolve_wanted(conn, wanted))
    before = await db.run(lambda conn: q_agent_statuses(conn, uid))
    after = [{"name": i.name, "version": i.version} for i in infos]
    entry = audit_entry(
        request, "agent.packages.set", target, before=before["offered"], after=after
    )
    registry = _registry(request)
    try:
        await registry.set_offers(
            uid, [(i.name, i.version) for i in infos], lambda conn: append_audit(conn, entry)
        )
    except psycopg.errors.ForeignKeyViolation:
        raise APIError(409, "package_not_found", "a package was deleted meanwhile") from None
    return JSONResponse(await load_agent_packages(registry, uid))


def _authorise(request: Request, name: str, version: str) -> None:
    """A download needs the offer's signed URL or agent credentials; else a 401 or a 403."""
    params = request.query_params
    if "signature" in params:
        expires, signature = signed_url_params(params)
        why = _registry(request).signer.verify(name, version, expires, signature, now=time.time())
        if why is None:
            return
        raise APIError(403, "forbidden", why)
    given = request.headers.get("authorization", "")
    if not given:
        raise APIError(
            401,
            "unauthorized",
            "a signed URL (from the package offer) or agent credentials are required",
        )
    shared = shared_of(request)
    if shared.agent_authorization is not None and hmac.compare_digest(
        given.encode(), shared.agent_authorization
    ):
        return
    scheme, _, token = given.partition(" ")
    tokens = shared.agent_tokens
    if scheme.lower() == "bearer" and tokens is not None:
        if tokens.uid_of(token.strip()) is not None:
            return
    raise APIError(401, "unauthorized", "invalid agent credentials")


def _wanted_range(request: Request, info: PackageInfo) -> tuple[int, int] | str | None:
    """``parse_range`` of the request's ``Range``, unless ``If-Range`` names another file."""
    wanted = parse_range(request.headers.get("range"), info.size_bytes)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != info.etag:
        return None  # the agent's partial copy is of another file: send it all
    return wanted


@router.get(
    "/v1/packages/{name}/{version}/file",
    Operation(
        "Download a package file",
        "The URL in a package offer (signed, expiring: `expires`, `signature`), or with "
        "agent credentials (`Authorization`: the shared agent token or a per-agent "
        "token). `ETag` is the SHA-256; one `Range` gives 206 (416 when unsatisfiable); "
        "`If-Range` and `If-None-Match` are honoured.",
        params=(NAME_PARAM, VERSION_PARAM, EXPIRES_PARAM, SIGNATURE_PARAM),
        errors=(400, 401, 403, 404),
        secured=False,
        extra_responses={
            "200": {
                "description": "The file.",
                "content": {"application/octet-stream": {"schema": {}}},
            },
            "206": {
                "description": "The requested range.",
                "content": {"application/octet-stream": {"schema": {}}},
            },
            "304": {"description": "Not modified (If-None-Match)."},
            "416": {"description": "Range not satisfiable."},
        },
    ),
)
async def download_package(request: Request) -> Response:
    name, version = _path_name_version(request)
    _authorise(request, name, version)
    info = await services_of(request).db.run(lambda conn: q_get(conn, name, version))
    if info is None:
        raise _not_found(name, version)
    size = info.size_bytes
    headers = {
        "etag": info.etag,
        "accept-ranges": "bytes",
        "cache-control": "private, max-age=0",
        "content-disposition": _content_disposition(info),
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and info.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    wanted = _wanted_range(request, info)
    if wanted == "unsatisfiable":
        headers["content-range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    status = 200
    start, end = 0, size - 1
    if isinstance(wanted, tuple):
        start, end = wanted
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    length = max(0, end - start + 1)
    headers["content-length"] = str(length)
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, headers=headers, media_type=None)
    registry = _registry(request)
    registry.downloads_total += 1
    return StreamingResponse(
        _stream(registry, info.storage_key, start, end),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _stream(
    registry: PackageRegistry, key: str, start: int, end: int
) -> AsyncIterator[bytes]:
    """Chunks of the file read in worker threads; the generator is closed in one too."""
    limiter = registry.io_limiter
    chunks: Generator[bytes, None, None] = registry.store.read(key, start, end)
    sent = 0
    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None, limiter=limiter)
            if chunk is None:
                break
            sent += len(chunk)
            yield chunk
    finally:
        registry.download_bytes_total += sent
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(chunks.close, limiter=limiter)
