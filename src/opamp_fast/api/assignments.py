"""Per-agent configuration routes: operator labels, pins, and the effective assignment.

``PUT /api/agents/{id}/labels`` replaces the agent's operator labels (stored in
``agents.labels``, GIN-indexed, what ``?label=`` filters on); ``PUT /api/agents/{id}/config``
pins one agent to a version (``{"config": null}`` unpins it). :func:`remote_config_state` is the
``remote_config`` of the agent detail: the assignment this instance's directory resolves (the
same on every instance once its reload is done) and what the agent reported for it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..protocol.codec import format_instance_uid
from ..remote_config.model import (
    MAX_LABELS,
    ConfigInputError,
    Directory,
    config_name_or_none,
    json_attributes,
    parse_labels,
)
from ..services import Services
from ..storage import config_queries as cq
from ..storage.config_queries import AgentOutcome, NotFound
from . import audit
from .body import body_integer, input_error, labels_schema, nullable, only_keys, read_object
from .components import COMPONENTS_MISSING, FORCE_PARAM, parse_force
from .config_models import AgentAssignment, AgentLabels, ConfigRef, RemoteConfigState
from .configs import NAME_SCHEMA, VERSION_SCHEMA, refresh_configs, run_db
from .errors import APIError
from .params import AGENT_ID_PARAM, path_agent_id
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of, shared_of

MAX_BODY_BYTES = 64 * 1024
LABELS_BODY = {
    "type": "object",
    "required": ["labels"],
    "additionalProperties": False,
    "properties": {"labels": labels_schema(MAX_LABELS)},
}
PIN_BODY = {
    "type": "object",
    "required": ["config"],
    "additionalProperties": False,
    "properties": {
        "config": {**nullable(NAME_SCHEMA), "description": "A config name; null unpins."},
        "version": {**nullable(VERSION_SCHEMA), "description": "Null or absent: the latest."},
    },
}


def remote_config_state(
    directory: Directory, uid: bytes, outcome: AgentOutcome
) -> RemoteConfigState:
    """The agent's effective assignment (pin, else winning group) and its reported outcome."""
    labels = {k: v for k, v in outcome.labels.items() if isinstance(v, str)}
    assignment = directory.resolve(uid, json_attributes(outcome.description), labels)
    reported = outcome.reported or {}
    reported_hash = reported.get("last_remote_config_hash") or None
    reported_status = str(reported.get("status", "")).lower() or None
    if assignment is None:
        ref = directory.by_hash.get(bytes.fromhex(reported_hash)) if reported_hash else None
        return RemoteConfigState(
            name=ref.name if ref else None,
            version=ref.version if ref else None,
            hash=reported_hash,
            status="unassigned",
            error=reported.get("error_message") or None,
            updated_at=outcome.updated_at,
            source=None,
            group=None,
            reported_hash=reported_hash,
        )
    wanted = assignment.config_hash.hex()
    error = None
    if reported_hash == wanted and reported_status in ("applied", "applying", "failed"):
        status = reported_status
        if status == "failed":
            error = reported.get("error_message") or outcome.failed_error
    elif outcome.failed_hash == wanted:
        status, error = "failed", outcome.failed_error
    else:
        status = "pending"
    return RemoteConfigState(
        name=assignment.ref.name,
        version=assignment.ref.version,
        hash=wanted,
        status=status,
        error=error,
        updated_at=outcome.updated_at,
        source=assignment.source,
        group=assignment.group,
        reported_hash=reported_hash,
    )


def _assignment(
    services: Services, uid: bytes, outcome: AgentOutcome, pin: tuple[str, int] | None
) -> Response:
    configs = services.configs
    return JSONResponse(
        AgentAssignment(
            agent_id=format_instance_uid(uid),
            pinned=None if pin is None else ConfigRef(*pin),
            remote_config=remote_config_state(
                configs.directory if configs is not None else Directory(), uid, outcome
            ),
        )
    )


async def _agent_change(
    request: Request, action: str, keys: set[str]
) -> tuple[bytes, dict[str, Any]]:
    """The agent of the path and the body (with only ``keys``), once the caller may change it."""
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "operator", action=action, target=target)
    body = await read_object(request, MAX_BODY_BYTES)
    only_keys(body, keys)
    return uid, body


router = Router()

WRITE_ERRORS = (400, 403, 404, 413, 503)


@router.put(
    "/api/agents/{id}/labels",
    Operation(
        "Set an agent's operator labels",
        'Body: `{"labels": {"env": "prod"}}` (replaces them). Groups select on them, '
        "and on the agent's own attributes; `?label=` filters the lists. Needs the "
        "operator role.",
        params=(AGENT_ID_PARAM,),
        response=AgentLabels,
        errors=WRITE_ERRORS,
        body=LABELS_BODY,
        links=links(["get_agent"], id="$request.path.id"),
    ),
)
async def put_agent_labels(request: Request) -> Response:
    uid, body = await _agent_change(request, "agent.labels", {"labels"})
    text_id = format_instance_uid(uid)
    try:
        labels = parse_labels(body.get("labels"))
    except ConfigInputError as exc:
        raise input_error(exc) from None
    services = services_of(request)

    def work(conn: cq.Conn) -> None:
        before = cq.set_labels(conn, uid, labels)
        if before is None:
            raise NotFound("agent_not_found", f"no agent {text_id}")
        entry = audit.entry(
            request, "agent.labels", f"agent:{text_id}", before=before, after=labels
        )
        cq.append_audit(conn, entry)
        cq.notify_changed(conn, services.settings.instance_id)

    await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(AgentLabels(text_id, labels))


@router.get(
    "/api/agents/{id}/config",
    Operation(
        "An agent's config assignment",
        "Its pin, if any, and the effective assignment with the agent's outcome.",
        params=(AGENT_ID_PARAM,),
        response=AgentAssignment,
        errors=(400, 404, 503),
    ),
)
async def get_agent_config(request: Request) -> Response:
    uid = path_agent_id(request)

    def work(conn: cq.Conn) -> tuple[AgentOutcome, tuple[str, int] | None]:
        outcome = cq.agent_outcome(conn, uid)
        if outcome is None:
            raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
        return outcome, cq.get_pin(conn, uid)

    services = services_of(request)
    outcome, pin = await run_db(services, work)
    return _assignment(services, uid, outcome, pin)


def _pin_text(pin: tuple[str, int] | None) -> str | None:
    return None if pin is None else f"{pin[0]}@{pin[1]}"


@router.put(
    "/api/agents/{id}/config",
    Operation(
        "Pin an agent to a config version",
        'Body: `{"config": "<name>", "version": n}` (`version` defaults to the latest); '
        '`{"config": null}` removes the pin. A pin wins over every group. When the agent '
        "reported its components, it must have every component type the config names: "
        "422 `components_missing` otherwise, unless `?force=true` (audited). Needs the "
        "operator role.",
        params=(AGENT_ID_PARAM, FORCE_PARAM),
        response=AgentAssignment,
        errors=WRITE_ERRORS,
        extra_responses=COMPONENTS_MISSING,
        body=PIN_BODY,
        links=links(["get_agent_config"], id="$request.path.id"),
    ),
)
async def put_agent_config(request: Request) -> Response:
    uid, body = await _agent_change(request, "agent.config", {"config", "version"})
    text_id = format_instance_uid(uid)
    if "config" not in body:
        raise APIError(400, "invalid_body", "config: required (a config name, or null to unpin)")
    try:
        config = config_name_or_none(body["config"])
    except ConfigInputError as exc:
        raise input_error(exc) from None
    version = body.get("version")
    if version is not None:
        version = body_integer(version, "version", 1, 2**31 - 1)
    services = services_of(request)
    force = parse_force(request)
    components = shared_of(request).components

    def work(conn: cq.Conn) -> tuple[AgentOutcome, tuple[str, int] | None]:
        if not cq.agent_known(conn, uid):
            raise NotFound("agent_not_found", f"no agent {text_id}")
        before = cq.get_pin(conn, uid)
        pin: tuple[str, int] | None = None
        after: dict[str, Any] = {}
        if config is None:
            cq.clear_pin(conn, uid)
        else:
            row = cq.require_version(conn, config, version)
            pin = (row.name, row.version)
            forced = components.require(conn, pin, [uid], force=force)
            if forced is not None:
                after["components"] = forced
            cq.set_pin(conn, uid, *pin)
        entry = audit.entry(
            request,
            "agent.config",
            f"agent:{text_id}",
            before={"pin": _pin_text(before)},
            after={"pin": _pin_text(pin), **after},
        )
        cq.append_audit(conn, entry)
        cq.notify_changed(conn, services.settings.instance_id)
        outcome = cq.agent_outcome(conn, uid)
        assert outcome is not None
        return outcome, pin

    outcome, pin = await run_db(services, work)
    await refresh_configs(services)
    return _assignment(services, uid, outcome, pin)
