"""``/api/configs``: named configurations and their immutable versions, and their status.

``POST /api/configs`` creates a version (or returns the identical one); versions are read
newest first; a config can be deleted only when no group, pin or active rollout uses it. The
status summary counts the agents whose last report names each version, by status, and groups
their failure messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from starlette.requests import Request
from starlette.responses import Response

from ..protocol import remote_config_hash
from ..remote_config.model import (
    MAX_CONTENT_TYPE_CHARS,
    MAX_FILE_NAME_CHARS,
    MAX_FILES,
    NAME_PATTERN,
    ConfigInputError,
    files_to_json,
    parse_files,
    parse_name,
)
from ..services import Services
from ..storage import config_queries as cq
from ..storage.config_queries import Conflict, NotFound, VersionRow
from ..strictint import parse_ascii_int
from . import audit
from .body import input_error, only_keys, read_object
from .config_models import (
    ConfigCreated,
    ConfigDeleted,
    ConfigDetail,
    ConfigFile,
    ConfigList,
    ConfigStatus,
    ConfigSummary,
    ConfigVersionDetail,
    ConfigVersionInfo,
    FailureSignature,
    VersionStatus,
)
from .errors import APIError, invalid_parameter
from .openapi import json_response
from .params import NO_NUL_PATTERN, Param, text_schema
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of

T = TypeVar("T")
ENVELOPE_BYTES = 1024  # room for the rest of the ServerToAgent message around the files

NAME_SCHEMA = {"type": "string", "pattern": NAME_PATTERN}
NAME_PARAM = Param(
    "name", "path", "Config name: letters, digits, '.', '_', '-' (1-128).", NAME_SCHEMA, True
)
VERSION_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
VERSION_PARAM = Param("version", "path", "Version number (1, 2, ...).", VERSION_SCHEMA, True)
CREATED_NAME = "$response.body#/version/name"
CREATED_VERSION = "$response.body#/version/version"
CONFIG_BODY = {
    "type": "object",
    "required": ["name", "files"],
    "additionalProperties": False,
    "properties": {
        "name": NAME_SCHEMA,
        "files": {
            "type": "object",
            "description": 'File name (may be "") -> file. Their bytes together at most '
            "`max_message_bytes` less 1 KiB (413 beyond).",
            "minProperties": 1,
            "maxProperties": MAX_FILES,
            "propertyNames": text_schema(MAX_FILE_NAME_CHARS),
            "additionalProperties": {
                "type": "object",
                "required": ["body"],
                "additionalProperties": False,
                "properties": {
                    "body": {"type": "string", "pattern": NO_NUL_PATTERN},
                    "content_type": {
                        **text_schema(MAX_CONTENT_TYPE_CHARS),
                        "default": "text/yaml",
                    },
                },
            },
        },
    },
}


async def run_db(services: Services, fn: Callable[[cq.Conn], T]) -> T:
    """``db.run`` with storage conflicts turned into 404/409 JSON errors."""
    try:
        return await services.db.run(fn)
    except NotFound as exc:
        raise APIError(404, exc.code, exc.message) from None
    except Conflict as exc:
        raise APIError(409, exc.code, exc.message) from None
    except psycopg.errors.IntegrityError as exc:
        raise APIError(409, "conflict", f"conflicting change: {exc.diag.message_primary}") from None


async def refresh_configs(services: Services) -> None:
    """Reload this instance's directory before answering, so that the answer and this
    instance's agents see the change at once (the other instances reload on its notice)."""
    if services.configs is not None:
        await services.configs.refresh()


def path_name(request: Request, key: str = "name", what: str = "name") -> str:
    try:
        return parse_name(request.path_params[key], what)
    except ConfigInputError as exc:
        raise input_error(exc) from None


def path_version(request: Request) -> int:
    raw = request.path_params["version"]
    version = parse_ascii_int(raw, max_digits=10)
    if version is None or not 1 <= version < 2**31:
        raise invalid_parameter("version", f"{raw[:20]!r} is not a version number")
    return version


def _version_fields(row: VersionRow) -> tuple[str, int, str, int, datetime, str]:
    return (
        row.name,
        row.version,
        row.config_hash.hex(),
        row.size_bytes,
        row.created_at.astimezone(UTC),
        row.created_by,
    )


def version_info(row: VersionRow) -> ConfigVersionInfo:
    return ConfigVersionInfo(*_version_fields(row))


def version_detail(row: VersionRow) -> ConfigVersionDetail:
    files = {
        name: ConfigFile(f["body"], f["content_type"]) for name, f in (row.files or {}).items()
    }
    return ConfigVersionDetail(*_version_fields(row), files)


def _versions(conn: cq.Conn, name: str) -> list[VersionRow]:
    """The versions of config ``name``, newest first, or a 404 ``config_not_found``."""
    versions = cq.versions_of(conn, name)
    if not versions:
        raise NotFound("config_not_found", f"no config {name!r}")
    return versions


router = Router(tags=("configs",))

ERRORS = (400, 404, 503)


@router.post(
    "/api/configs",
    Operation(
        "Create a config version",
        'Body: `{"name", "files": {"<file>": {"body", "content_type"}}}`. A new version '
        "when the content is new (201), the existing one when an identical version "
        "exists (200). The hash is the OpAMP config hash. Needs the operator role; "
        "bodies beyond `max_message_bytes` get 413.",
        response=ConfigCreated,
        errors=(400, 403, 409, 413, 503),
        status=201,
        extra_responses={
            "200": json_response("An identical version exists: it is returned.", ConfigCreated)
        },
        body=CONFIG_BODY,
        links={
            **links(["get_config", "config_status", "delete_config"], name=CREATED_NAME),
            **links(["get_config_version"], name=CREATED_NAME, version=CREATED_VERSION),
        },
    ),
)
async def create_config(request: Request) -> Response:
    services = services_of(request)
    max_bytes = services.settings.max_message_bytes
    body = await read_object(request, max_bytes)
    raw = body.get("name")
    target = f"config:{raw}"[:200] if isinstance(raw, str) else "config"
    who = require_role(request, "operator", action="config.create", target=target)
    try:
        only_keys(body, {"name", "files"})
        name = parse_name(raw)
        files = parse_files(body.get("files"), max_bytes=max_bytes - ENVELOPE_BYTES)
    except ConfigInputError as exc:
        raise input_error(exc) from None
    stored = files_to_json(files)
    config_hash = remote_config_hash(files)
    size = sum(len(b) for b, _ in files.values())

    def work(conn: cq.Conn) -> tuple[VersionRow, bool]:
        row, created = cq.create_version(conn, name, stored, config_hash, size, who.subject)
        if created:
            after = {"version": row.version, "hash": config_hash.hex(), "files": sorted(files)}
            cq.append_audit(
                conn, audit.entry(request, "config.create", f"config:{name}", after=after)
            )
        return row, created

    row, created = await run_db(services, work)
    detail = version_detail(dataclasses.replace(row, files=stored))
    return JSONResponse(ConfigCreated(created, detail), 201 if created else 200)


@router.get(
    "/api/configs",
    Operation(
        "List configs",
        "Every config with its latest version.",
        response=ConfigList,
        errors=(503,),
    ),
)
async def list_configs(request: Request) -> Response:
    rows = await run_db(services_of(request), cq.list_configs)
    return JSONResponse(
        ConfigList(
            [
                ConfigSummary(n, v, int(c), bytes(h).hex(), t.astimezone(UTC))
                for n, v, c, h, t in rows
            ]
        )
    )


@router.get(
    "/api/configs/{name}",
    Operation(
        "A config's versions",
        "Newest first.",
        params=(NAME_PARAM,),
        response=ConfigDetail,
        errors=ERRORS,
    ),
)
async def get_config(request: Request) -> Response:
    name = path_name(request)
    rows = await run_db(services_of(request), lambda conn: _versions(conn, name))
    return JSONResponse(ConfigDetail(name, [version_info(r) for r in rows]))


@router.delete(
    "/api/configs/{name}",
    Operation(
        "Delete a config",
        "Every version goes; 409 `config_in_use` while a group, a pin or an active "
        "rollout uses any of them. Needs the operator role.",
        params=(NAME_PARAM,),
        response=ConfigDeleted,
        errors=(400, 403, 404, 409, 503),
    ),
)
async def delete_config(request: Request) -> Response:
    name = path_name(request)
    require_role(request, "operator", action="config.delete", target=f"config:{name}")

    def work(conn: cq.Conn) -> int:
        versions = _versions(conn, name)
        deleted = cq.delete_config(conn, name)
        before = {"versions": [v.version for v in versions]}
        cq.append_audit(
            conn, audit.entry(request, "config.delete", f"config:{name}", before=before)
        )
        return deleted

    deleted = await run_db(services_of(request), work)
    return JSONResponse(ConfigDeleted(name, deleted))


@router.get(
    "/api/configs/{name}/versions/{version}",
    Operation(
        "A config version with its files",
        params=(NAME_PARAM, VERSION_PARAM),
        response=ConfigVersionDetail,
        errors=ERRORS,
    ),
)
async def get_config_version(request: Request) -> Response:
    name = path_name(request)
    version = path_version(request)
    row = await run_db(services_of(request), lambda conn: cq.require_version(conn, name, version))
    return JSONResponse(version_detail(row))


@router.get(
    "/api/configs/{name}/status",
    Operation(
        "Agents by version and status",
        "Agents whose last report names a version of this config, by status "
        "(applied, applying, failed), plus agents that failed a version and fell back "
        "(counted failed), and the failure messages grouped by text.",
        params=(NAME_PARAM,),
        response=ConfigStatus,
        errors=ERRORS,
    ),
)
async def config_status(request: Request) -> Response:
    name = path_name(request)

    def work(conn: cq.Conn) -> tuple[list[VersionRow], Any, Any]:
        versions = _versions(conn, name)
        by_status, errors = cq.config_status(conn, name)
        return versions, by_status, errors

    versions, by_status, errors = await run_db(services_of(request), work)
    per = {v.version: VersionStatus(v.version, v.config_hash.hex()) for v in versions}
    totals = {"applied": 0, "applying": 0, "failed": 0, "unset": 0}
    for version, state, count in by_status:
        key = state if state in totals else "unset"
        item = per[version]
        setattr(item, key, getattr(item, key) + int(count))
        totals[key] += int(count)
    return JSONResponse(
        ConfigStatus(
            name=name,
            totals=totals,
            versions=list(per.values()),
            errors=[FailureSignature(v, e or "", int(c)) for v, e, c in errors],
        )
    )
