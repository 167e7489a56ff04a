"""``/api/groups``: named selectors, the version their members run, the packages they are
offered, rollouts and rollback.

``PUT /api/groups/{name}`` creates or replaces a group: its selector, config version and the
package versions it offers its members (``packages``; stored in ``group_packages``, resolved in
memory by ``packages.registry``). When the version changes, the previous one is remembered
(``POST /api/groups/{name}/rollback`` returns to it) and, with ``rollout``, the change goes out
batch by batch (``storage.rollout_queries``): the first batch is admitted before the answer, the
next ones by the rollout driver as batches report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..auth import Principal
from ..packages.registry import Ref, q_group_packages, q_set_group_packages
from ..remote_config.model import (
    MAX_SELECTOR_KEYS,
    ConfigInputError,
    config_name_or_none,
    parse_selector,
)
from ..storage import config_queries as cq
from ..storage import rollout_queries as rq
from ..storage.config_queries import Conflict, GroupRow, NotFound
from . import audit
from .body import (
    body_integer,
    input_error,
    labels_schema,
    nullable,
    only_keys,
    read_object,
)
from .components import COMPONENTS_MISSING, FORCE_PARAM, ComponentCache, parse_force
from .config_models import (
    ConfigRef,
    GroupDeleted,
    GroupInfo,
    GroupList,
    GroupPackage,
    RolloutInfo,
)
from .configs import NAME_SCHEMA, VERSION_SCHEMA, path_name, refresh_configs, run_db
from .errors import APIError
from .packages import PACKAGES_SCHEMA, parse_wanted, resolve_wanted
from .params import Param
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of, shared_of

MAX_BODY_BYTES = 64 * 1024

GROUP_PARAM = Param(
    "name", "path", "Group name: letters, digits, '.', '_', '-' (1-128).", NAME_SCHEMA, True
)


GROUP_KEYS = {"selector", "config", "version", "rollout", "packages", "forget_offline_after"}
# Seconds: a minute to a year. The short-lived members (a pod, a container) go that soon.
FORGET_SCHEMA = {"type": "integer", "minimum": 60, "maximum": 366 * 86400}
_NEEDS_CONFIG = {"required": ["config"], "properties": {"config": {"type": "string"}}}
GROUP_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "selector": {**labels_schema(MAX_SELECTOR_KEYS), "default": {}},
        "config": nullable(NAME_SCHEMA),
        "version": nullable(VERSION_SCHEMA),
        "rollout": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "batch_percent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                "max_failed_percent": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 100,
                    "default": 0,
                },
            },
        },
        "packages": nullable(PACKAGES_SCHEMA),
        "forget_offline_after": nullable(FORGET_SCHEMA),
    },
    "allOf": [  # a version or a rollout needs a config
        {
            "if": {"required": [key], "properties": {key: {"not": {"type": "null"}}}},
            "then": _NEEDS_CONFIG,
        }
        for key in ("version", "rollout")
    ],
}


def _ref(name: str | None, version: int | None) -> ConfigRef | None:
    return None if name is None or version is None else ConfigRef(name, version)


def rollout_info(row: rq.RolloutRow | None) -> RolloutInfo | None:
    if row is None:
        return None
    progress = 100.0 * row.admitted / row.eligible if row.eligible else 100.0
    if row.state == "completed":
        progress = 100.0
    return RolloutInfo(
        id=row.id,
        state=row.state,
        to=ConfigRef(row.to_name, row.to_version),
        batch_percent=row.batch_percent,
        max_failed_percent=row.max_failed_percent,
        batches=row.batches,
        eligible=row.eligible,
        admitted=row.admitted,
        applied=row.applied,
        failed=row.failed,
        pending=row.pending,
        progress_percent=round(progress, 1),
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at.astimezone(UTC),
        updated_at=row.updated_at.astimezone(UTC),
        source=_ref(row.from_name, row.from_version),
    )


def group_info(
    conn: cq.Conn,
    group: GroupRow,
    packages: list[Ref] | None = None,
    components: ComponentCache | None = None,
) -> GroupInfo:
    members, online = cq.count_matching(conn, group.selector)
    if packages is None:
        packages = q_group_packages(conn, group.name).get(group.name, [])
    target = _config_of(group)
    fit = None
    if components is not None and target is not None:
        fit = components.group_fit(conn, group.selector, target)
    return GroupInfo(
        name=group.name,
        selector=group.selector,
        config=_ref(group.config_name, group.config_version),
        previous=_ref(group.previous_name, group.previous_version),
        members=members,
        online_members=online,
        rollout=rollout_info(rq.latest_rollout(conn, group.name)),
        created_at=group.created_at.astimezone(UTC),
        updated_at=group.updated_at.astimezone(UTC),
        packages=[GroupPackage(n, v) for n, v in packages],
        components=fit,
        forget_offline_after=group.forget_offline_after_s,
    )


def _existing(conn: cq.Conn, name: str, *, lock: bool = False) -> GroupRow:
    """The group ``name``, or a 404 ``group_not_found``."""
    group = cq.get_group(conn, name, lock=lock)
    if group is None:
        raise NotFound("group_not_found", f"no group {name!r}")
    return group


def _summary(group: GroupRow | None, packages: list[Ref] | None = None) -> dict[str, Any] | None:
    if group is None:
        return None
    out: dict[str, Any] = {
        "selector": group.selector,
        "config": None
        if group.config_name is None
        else f"{group.config_name}@{group.config_version}",
    }
    if packages is not None:
        out["packages"] = [{"name": n, "version": v} for n, v in packages]
    if group.forget_offline_after_s is not None:
        out["forget_offline_after"] = group.forget_offline_after_s
    return out


def _packages_spec(value: Any) -> list[tuple[str, str]]:
    """The body's ``packages`` (absent or null: none) -> (name, version | "latest")."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise APIError(
            400, "invalid_body", 'packages: expected [{"name": ..., "version": ...}, ...] or null'
        )
    return parse_wanted(value)


def _rollout_spec(value: Any) -> dict[str, int] | None:
    """The body's ``rollout`` (absent or null: none), with its defaults."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise APIError(400, "invalid_body", "rollout: must be an object")
    only_keys(value, {"batch_percent", "max_failed_percent"})
    return {
        "batch_percent": body_integer(
            value.get("batch_percent", 10), "rollout.batch_percent", 1, 100
        ),
        "max_failed_percent": body_integer(
            value.get("max_failed_percent", 0), "rollout.max_failed_percent", 0, 100
        ),
    }


def _config_of(group: GroupRow | None) -> tuple[str, int] | None:
    """The version the group assigns, if any."""
    if group is None or group.config_name is None or group.config_version is None:
        return None
    return group.config_name, group.config_version


@dataclass(frozen=True, slots=True)
class _GroupChange:
    """A ``PUT /api/groups/{name}`` body, checked."""

    selector: dict[str, str]
    config: str | None
    version: int | None
    rollout: dict[str, int] | None  # batch_percent, max_failed_percent
    packages: list[tuple[str, str]]  # (name, version | "latest")
    forget_offline_after_s: int | None = None
    force: bool = False  # assign the config even to members lacking its components


def _group_change(body: dict[str, Any], *, packages_enabled: bool) -> _GroupChange:
    only_keys(body, GROUP_KEYS)
    wanted = _packages_spec(body.get("packages"))
    if wanted and not packages_enabled:
        raise APIError(400, "invalid_body", "packages: package management is not enabled")
    try:
        selector = parse_selector(body.get("selector", {})).as_dict()
        config = config_name_or_none(body.get("config"))
    except ConfigInputError as exc:
        raise input_error(exc) from None
    version = body.get("version")
    if version is not None:
        version = body_integer(version, "version", 1, 2**31 - 1)
        if config is None:
            raise APIError(400, "invalid_body", "version: needs 'config'")
    rollout = _rollout_spec(body.get("rollout"))
    if rollout is not None and config is None:
        raise APIError(400, "invalid_body", "rollout: needs 'config'")
    forget = body.get("forget_offline_after")
    if forget is not None:
        forget = body_integer(forget, "forget_offline_after", 60, 366 * 86400)
    return _GroupChange(selector, config, version, rollout, wanted, forget_offline_after_s=forget)


def _check_components(
    conn: cq.Conn, request: Request, name: str, target: tuple[str, int], force: bool
) -> dict[str, Any] | None:
    """Pre-flight: the members this group decides must have the components its config names
    (422 ``components_missing``), unless ``force``; what was forced, for the audit row."""
    uids = sorted(rq.decided_by_group(conn, name, online_only=False))
    return shared_of(request).components.require(conn, target, uids, force=force)


def _put(
    conn: cq.Conn, request: Request, name: str, change: _GroupChange, actor: str, me: str
) -> GroupInfo:
    """Create or replace the group in one transaction: its row, packages, rollout and audit."""
    old = cq.get_group(conn, name, lock=True)
    target = None
    if change.config is not None:
        row = cq.require_version(conn, change.config, change.version)
        target = (row.name, row.version)
    old_target = previous = _config_of(old)
    if target == old_target and old is not None and old.previous_name is not None:
        previous = (old.previous_name, old.previous_version or 0)
    group = cq.upsert_group(
        conn, name, change.selector, target, previous, change.forget_offline_after_s
    )
    forced = None
    if target is not None and (
        target != old_target or old is None or old.selector != group.selector
    ):
        forced = _check_components(conn, request, name, target, change.force)
    old_packages = q_group_packages(conn, name).get(name, [])
    packages = [(i.name, i.version) for i in resolve_wanted(conn, change.packages, lock=True)]
    q_set_group_packages(conn, name, packages)
    started = None
    if target != old_target:
        rq.stop_active(conn, name, "superseded")
        if change.rollout is not None and target is not None:
            started = rq.start_rollout(
                conn,
                name,
                old_target,
                target,
                batch_percent=change.rollout["batch_percent"],
                max_failed_percent=change.rollout["max_failed_percent"],
                actor=actor,
            )
    after: dict[str, Any] = {**(_summary(group, packages) or {})}
    if started is not None:
        after["rollout"] = change.rollout
    if forced is not None:
        after["components"] = forced
    before = _summary(old, old_packages)
    cq.append_audit(
        conn, audit.entry(request, "group.put", f"group:{name}", before=before, after=after)
    )
    if started is not None:
        rq.advance(conn, started, sender=me)  # the first batch, now
    cq.notify_changed(conn, me)
    return group_info(conn, group, packages, shared_of(request).components)


def _rollback(conn: cq.Conn, request: Request, name: str, me: str) -> GroupInfo:
    old = _existing(conn, name, lock=True)
    if old.previous_name is None or old.previous_version is None:
        raise Conflict("no_previous_version", f"group {name!r} has no previous version")
    stopped = rq.stop_active(conn, name, "rolled_back")
    group = cq.upsert_group(
        conn,
        name,
        old.selector,
        (old.previous_name, old.previous_version),
        _config_of(old),
        old.forget_offline_after_s,
    )
    before: dict[str, Any] = {**(_summary(old) or {})}
    if stopped is not None:
        before["rollout"] = stopped.summary()
    cq.append_audit(
        conn,
        audit.entry(
            request, "group.rollback", f"group:{name}", before=before, after=_summary(group)
        ),
    )
    cq.notify_changed(conn, me)
    return group_info(conn, group)


def _writable_group(request: Request, action: str) -> tuple[str, Principal]:
    """The group of the path, and the caller once it may ``action`` it."""
    name = path_name(request)
    return name, require_role(request, "operator", action=action, target=f"group:{name}")


router = Router(tags=("groups",))

WRITE_ERRORS = (400, 403, 404, 409, 413, 503)


@router.get(
    "/api/groups",
    Operation(
        "List groups",
        "Every group with its member counts and latest rollout.",
        response=GroupList,
        errors=(503,),
    ),
)
async def list_groups(request: Request) -> Response:
    components = shared_of(request).components

    def work(conn: cq.Conn) -> list[GroupInfo]:
        packages = q_group_packages(conn)
        return [
            group_info(conn, g, packages.get(g.name, []), components) for g in cq.list_groups(conn)
        ]

    return JSONResponse(GroupList(await run_db(services_of(request), work)))


@router.get(
    "/api/groups/{name}",
    Operation(
        "A group",
        "Selector, version, previous version, the packages it offers, member counts "
        "(agents matching the selector, fleet-wide) and the latest rollout with its "
        "progress.",
        params=(GROUP_PARAM,),
        response=GroupInfo,
        errors=(400, 404, 503),
    ),
)
async def get_group(request: Request) -> Response:
    name = path_name(request)
    components = shared_of(request).components

    def work(conn: cq.Conn) -> GroupInfo:
        return group_info(conn, _existing(conn, name), components=components)

    return JSONResponse(await run_db(services_of(request), work))


@router.put(
    "/api/groups/{name}",
    Operation(
        "Create or replace a group",
        'Body: `{"selector": {"env": "prod"}, "config": "<name>", "version": n, '
        '"rollout": {"batch_percent": 10, "max_failed_percent": 5}, "packages": '
        '[{"name": "<package>", "version": "<semver>"}], "forget_offline_after": 3600}`. '
        "`version` "
        "defaults to the config's latest; `config: null` assigns nothing. A changed "
        "version supersedes an active rollout; with `rollout` it goes out batch by "
        "batch, otherwise to every member at once. `packages` (a package `version` "
        'defaults to `"latest"`, resolved now; absent, `null` or `[]`: none) is offered '
        "to the members this group decides (the configs' precedence) that have no offer "
        "of their own, at once over WebSocket. 404 `package_not_found`. When the config "
        "or the selector changes, the members the group decides that reported their "
        "components must have every component type the config names: 422 "
        "`components_missing` lists those that lack some, unless `?force=true` (audited). "
        "`forget_offline_after` (seconds, 60 to a year; absent or `null`: the fleet's "
        "`--forget-offline-after-days`) forgets the short-lived members this group decides "
        "(a description with `k8s.pod.name`, `k8s.pod.uid` or `container.id`) once offline "
        "that long. Needs the operator role.",
        params=(GROUP_PARAM, FORCE_PARAM),
        response=GroupInfo,
        errors=WRITE_ERRORS,
        extra_responses=COMPONENTS_MISSING,
        body=GROUP_BODY,
        links=links(["get_group", "rollback_group", "delete_group"], name="$request.path.name"),
    ),
)
async def put_group(request: Request) -> Response:
    name, who = _writable_group(request, "group.put")
    services = services_of(request)
    body = await read_object(request, MAX_BODY_BYTES)
    change = _group_change(body, packages_enabled=services.packages is not None)
    change = dataclasses.replace(change, force=parse_force(request))
    me = services.settings.instance_id
    info = await run_db(services, lambda conn: _put(conn, request, name, change, who.subject, me))
    await refresh_configs(services)
    return JSONResponse(info)


@router.delete(
    "/api/groups/{name}",
    Operation(
        "Delete a group",
        "Its members fall to the next matching group (its package offer goes with "
        "it; agents keep what they installed).",
        params=(GROUP_PARAM,),
        response=GroupDeleted,
        errors=WRITE_ERRORS,
    ),
)
async def delete_group(request: Request) -> Response:
    name, _ = _writable_group(request, "group.delete")
    services = services_of(request)

    def work(conn: cq.Conn) -> None:
        old = _existing(conn, name, lock=True)
        before = _summary(old, q_group_packages(conn, name).get(name, []))
        cq.delete_group(conn, name)  # its group_packages rows go with it
        cq.append_audit(conn, audit.entry(request, "group.delete", f"group:{name}", before=before))
        cq.notify_changed(conn, services.settings.instance_id)

    await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(GroupDeleted(name))


@router.post(
    "/api/groups/{name}/rollback",
    Operation(
        "Roll a group back",
        "Returns the group to its previous version at once (the active rollout, if any, "
        "ends as `rolled_back`); 409 `no_previous_version` when there is none. Needs the "
        "operator role.",
        params=(GROUP_PARAM,),
        response=GroupInfo,
        errors=WRITE_ERRORS,
    ),
)
async def rollback_group(request: Request) -> Response:
    name, _ = _writable_group(request, "group.rollback")
    services = services_of(request)
    me = services.settings.instance_id
    info = await run_db(services, lambda conn: _rollback(conn, request, name, me))
    await refresh_configs(services)
    return JSONResponse(info)
