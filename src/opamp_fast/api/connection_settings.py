"""Connection settings: ``/api/groups/{name}/connection-settings``,
``/api/agents/{id}/connection-settings`` and ``/api/agents/{id}/rotate-certificate``.

A group (and an agent, as an override part by part) carries where its agents send their own
telemetry and their OpAMP connection (``connection_settings.model``). Every change commits with
its audit row (header values redacted) and a ``configs`` notice: each instance reloads the
offers with its configuration directory and pushes them to its WebSocket agents at once
(``connection_settings.service``). Header values are write-only: answers show ``<redacted>``,
and a ``PUT`` may send ``<redacted>`` back to keep a stored value.

The agent view is computed like the offer: the deciding group (the configs' precedence, from
this instance's directory), the agent's override, its capabilities and certificate serial give
the offered hash, compared with the ``ConnectionSettingsStatus`` it last reported.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..connection_settings.model import (
    HEADER_NAME_PATTERN,
    HEADER_VALUE_PATTERN,
    MASK,
    MAX_CA_PEM_CHARS,
    MAX_HEADER_NAME_CHARS,
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    MAX_HEARTBEAT_S,
    MAX_URL_CHARS,
    SIGNALS,
    ConnectionSettings,
    SettingsInputError,
    build_parts,
    parse_settings,
)
from ..connection_settings.service import EXPIRING_DAYS
from ..protocol import (
    AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS,
    AGENT_REPORTS_CONNECTION_SETTINGS_STATUS,
    AGENT_REPORTS_OWN_LOGS,
    AGENT_REPORTS_OWN_METRICS,
    AGENT_REPORTS_OWN_TRACES,
    SettingsOffer,
    format_instance_uid,
)
from ..remote_config.model import json_attributes, winning_group
from ..services import Services
from ..storage import config_queries as cq
from ..storage import settings_queries as sq
from ..storage.config_queries import NotFound
from . import audit
from .body import read_object
from .configs import path_name, refresh_configs, run_db
from .connection_models import (
    AgentConnectionSettings,
    CertificateInfo,
    GroupConnectionSettings,
    OfferedPart,
    OfferStatus,
    OpampTarget,
    ReportedSettingsStatus,
    RotationAccepted,
    SettingsBody,
    Source,
    TelemetryTarget,
)
from .errors import APIError
from .groups import GROUP_PARAM
from .params import AGENT_ID_PARAM, path_agent_id
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of

MAX_BODY_BYTES = 256 * 1024
_URL_PORT = r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5]?[0-9]{1,4}))?"
_URL_REST = r"([/?#][!-~]*)?$"


def _url_schema(schemes: str) -> dict[str, Any]:
    pattern = rf"^({schemes})://[A-Za-z0-9][A-Za-z0-9.-]*{_URL_PORT}{_URL_REST}"
    return {"type": "string", "maxLength": MAX_URL_CHARS, "pattern": pattern}


_HEADERS_SCHEMA = {
    "type": ["object", "null"],
    "maxProperties": MAX_HEADERS,
    "propertyNames": {"maxLength": MAX_HEADER_NAME_CHARS, "pattern": HEADER_NAME_PATTERN},
    "additionalProperties": {
        "type": "string",
        "maxLength": MAX_HEADER_VALUE_CHARS,
        "pattern": HEADER_VALUE_PATTERN,
    },
    "description": f"Header name -> value; shown as `{MASK}`, send `{MASK}` to keep a value.",
}
_TELEMETRY_SCHEMA = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["endpoint"],
    "properties": {
        "endpoint": _url_schema("http|https"),
        "headers": _HEADERS_SCHEMA,
        "tls_ca_pem": {"type": ["string", "null"], "maxLength": MAX_CA_PEM_CHARS},
    },
}
SETTINGS_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "telemetry": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {signal: _TELEMETRY_SCHEMA for signal in SIGNALS},
        },
        "opamp": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "endpoint": {**_url_schema("ws|wss|http|https"), "type": ["string", "null"]},
                "confirm_endpoint": {"type": ["string", "null"], "maxLength": MAX_URL_CHARS},
                "headers": _HEADERS_SCHEMA,
                "heartbeat_interval_seconds": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": MAX_HEARTBEAT_S,
                },
            },
            "dependentRequired": {"endpoint": ["confirm_endpoint"]},
        },
    },
}
_REPORTED: dict[str, OfferStatus] = {
    "APPLIED": "applied",
    "APPLYING": "applying",
    "FAILED": "failed",
}
_OWN_BITS = {
    "metrics": AGENT_REPORTS_OWN_METRICS,
    "traces": AGENT_REPORTS_OWN_TRACES,
    "logs": AGENT_REPORTS_OWN_LOGS,
}


def _body(settings: ConnectionSettings) -> SettingsBody:
    shown = settings.to_json(masked=True)
    telemetry = {s: TelemetryTarget(**t) for s, t in shown["telemetry"].items()}
    opamp = OpampTarget(**shown["opamp"]) if shown["opamp"] is not None else None
    return SettingsBody(telemetry, opamp)


def _group_answer(name: str, settings: ConnectionSettings) -> GroupConnectionSettings:
    body = _body(settings)
    return GroupConnectionSettings(name, body.telemetry, body.opamp)


def _parse(body: dict[str, Any], stored: dict[str, Any] | None) -> ConnectionSettings:
    try:
        return parse_settings(body, stored=ConnectionSettings.from_json(stored))
    except SettingsInputError as exc:
        raise APIError(400, exc.code, exc.message) from None


def _audited(
    conn: cq.Conn,
    request: Request,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: ConnectionSettings | None,
) -> None:
    """The change's audit row (header values redacted) and the notice that reloads offers."""
    shown_before = ConnectionSettings.from_json(before).to_json(masked=True) if before else None
    shown_after = after.to_json(masked=True) if after is not None else None
    row = audit.entry(request, action, target, before=shown_before, after=shown_after)
    cq.append_audit(conn, row)
    cq.notify_changed(conn, services_of(request).settings.instance_id)


# ------------------------------------------------------------------------------ the agent view


@dataclass(frozen=True, slots=True)
class _AgentFacts:
    capabilities: int
    labels: dict[str, str]
    description: dict[str, Any] | None
    override: dict[str, Any] | None
    certificate: sq.CertificateRow | None
    reported: sq.StatusRow | None


def _facts(conn: cq.Conn, uid: bytes) -> _AgentFacts:
    row = conn.execute(
        "SELECT capabilities, labels, description FROM agents WHERE instance_uid = %s", (uid,)
    ).fetchone()
    if row is None:
        raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
    labels = {k: v for k, v in (row[1] or {}).items() if isinstance(v, str)}
    return _AgentFacts(
        capabilities=int(row[0]) & ((1 << 64) - 1),
        labels=labels,
        description=row[2],
        override=sq.agent_settings(conn, uid),
        certificate=sq.certificate_of(conn, uid),
        reported=sq.status_of(conn, uid),
    )


def _offer_status(facts: _AgentFacts, offered: bytes | None) -> OfferStatus:
    if offered is None:
        return "none"
    if not facts.capabilities & AGENT_REPORTS_CONNECTION_SETTINGS_STATUS:
        return "not_reported"
    reported = facts.reported
    if reported is None or reported.settings_hash != offered:
        return "pending"
    return _REPORTED.get(reported.status, "pending")


def agent_view(services: Services, uid: bytes, facts: _AgentFacts) -> AgentConnectionSettings:
    """What the agent is offered and what it made of it (see the module docstring)."""
    service = services.connection_settings
    assert service is not None and services.configs is not None
    directory = services.configs.directory
    group = winning_group(directory.groups, facts.labels, json_attributes(facts.description))
    group_name = group.name if group is not None else None
    base = (service.group_settings(group_name) if group_name else None) or ConnectionSettings()
    override = ConnectionSettings.from_json(facts.override)
    effective = base.merged(override)
    serial = service.serial_of(uid)
    heartbeat_s = services.settings.heartbeat_interval_s
    offer = services.fleet.policy.settings_offer
    if not effective.empty or serial:
        offer = SettingsOffer(build_parts(effective, heartbeat_s), serial=serial)
    variant = offer.pick(facts.capabilities)
    status = _offer_status(facts, variant.hash if variant is not None else None)
    parts = _parts(effective, (base, override), facts.capabilities, status, heartbeat_s)
    return AgentConnectionSettings(
        agent_id=format_instance_uid(uid),
        group=group_name,
        offered_hash=variant.hash.hex() if variant is not None else None,
        status=status,
        reported=_reported(facts.reported),
        override=None if facts.override is None else _body(override),
        certificate=_certificate(facts.certificate),
        **parts,
    )


def _parts(
    effective: ConnectionSettings,
    sources: tuple[ConnectionSettings, ConnectionSettings],
    caps: int,
    status: OfferStatus,
    heartbeat_s: int,
) -> dict[str, OfferedPart]:
    """Each part as offered (``sources``: the group's settings, the agent's override)."""
    base, override = sources
    shown = effective.to_json(masked=True)
    out: dict[str, OfferedPart] = {}
    for signal in SIGNALS:
        target = shown["telemetry"].get(signal)
        if target is None:
            out[signal] = OfferedPart(None, {}, None, "none")
            continue
        source: Source = "agent" if override.signal(signal) else "group"
        took: OfferStatus = status if caps & _OWN_BITS[signal] else "not_supported"
        out[signal] = OfferedPart(target["endpoint"], target["headers"], source, took)
    opamp = shown["opamp"] or {"endpoint": None, "headers": {}, "heartbeat_interval_seconds": None}
    opamp_source: Source = "agent" if override.opamp else "group" if base.opamp else "server"
    took = status if caps & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS else "not_supported"
    heartbeat = opamp["heartbeat_interval_seconds"] or heartbeat_s
    out["opamp"] = OfferedPart(opamp["endpoint"], opamp["headers"], opamp_source, took, heartbeat)
    return out


def _reported(row: sq.StatusRow | None) -> ReportedSettingsStatus | None:
    if row is None:
        return None
    return ReportedSettingsStatus(
        row.settings_hash.hex(), row.status, row.error_message, row.reported_at.astimezone(dt.UTC)
    )


def _certificate(row: sq.CertificateRow | None) -> CertificateInfo | None:
    if row is None:
        return None
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=EXPIRING_DAYS)
    return CertificateInfo(
        serial=row.serial,
        not_before=row.not_before.astimezone(dt.UTC),
        not_after=row.not_after.astimezone(dt.UTC),
        origin=row.origin,  # type: ignore[arg-type]
        issued_at=row.issued_at.astimezone(dt.UTC),
        issued_by=row.issued_by,
        expiring=row.not_after <= soon,
    )


async def load_agent_view(services: Services, uid: bytes) -> AgentConnectionSettings:
    facts = await run_db(services, lambda conn: _facts(conn, uid))
    return agent_view(services, uid, facts)


# ---------------------------------------------------------------------------------- routes

router = Router(tags=("connection settings",))

WRITE_ERRORS = (400, 403, 404, 503)
_GROUP_OPERATIONS = ("get", "put", "delete")
TO_GROUP = links(
    [f"{verb}_group_connection_settings" for verb in _GROUP_OPERATIONS], name="$request.path.name"
)
TO_AGENT = links(
    [f"{verb}_agent_connection_settings" for verb in _GROUP_OPERATIONS], id="$request.path.id"
)


def _group_of(conn: cq.Conn, name: str) -> None:
    if cq.get_group(conn, name, lock=True) is None:
        raise NotFound("group_not_found", f"no group {name!r}")


@router.get(
    "/api/groups/{name}/connection-settings",
    Operation(
        "A group's connection settings",
        "Where its members send their own telemetry and their OpAMP connection; header "
        f"values are shown as `{MASK}`.",
        params=(GROUP_PARAM,),
        response=GroupConnectionSettings,
        errors=(400, 404, 503),
    ),
)
async def get_group_connection_settings(request: Request) -> Response:
    name = path_name(request)

    def work(conn: cq.Conn) -> dict[str, Any] | None:
        if cq.get_group(conn, name) is None:
            raise NotFound("group_not_found", f"no group {name!r}")
        return sq.group_settings(conn, name)

    stored = await run_db(services_of(request), work)
    return JSONResponse(_group_answer(name, ConnectionSettings.from_json(stored)))


@router.put(
    "/api/groups/{name}/connection-settings",
    Operation(
        "Set a group's connection settings",
        'Body: `{"telemetry": {"metrics": {"endpoint": "https://otlp.example:4318/v1/metrics", '
        '"headers": {"Authorization": "Bearer ..."}, "tls_ca_pem": "..."}, "traces": ..., '
        '"logs": ...}, "opamp": {"endpoint": "wss://new.example/v1/opamp", "confirm_endpoint": '
        '"wss://new.example/v1/opamp", "headers": {...}, "heartbeat_interval_seconds": 30}}`; '
        "replaces the group's settings. Offered to the members this group decides (the "
        "configs' precedence) as `own_metrics`/`own_traces`/`own_logs` and `opamp`, as far "
        "as their capabilities take them, at once over WebSocket. A new OpAMP `endpoint` must "
        "be repeated in `confirm_endpoint` (400 `endpoint_not_confirmed`). Audited "
        "(`group.connection_settings.put`, header values redacted). Needs the operator role.",
        params=(GROUP_PARAM,),
        response=GroupConnectionSettings,
        errors=WRITE_ERRORS,
        body=SETTINGS_BODY,
        links=TO_GROUP,
    ),
)
async def put_group_connection_settings(request: Request) -> Response:
    name = path_name(request)
    who = require_role(
        request, "operator", action="group.connection_settings.put", target=f"group:{name}"
    )
    services = services_of(request)
    body = await read_object(request, MAX_BODY_BYTES)

    def work(conn: cq.Conn) -> ConnectionSettings:
        _group_of(conn, name)
        stored = sq.group_settings(conn, name, lock=True)
        settings = _parse(body, stored)
        sq.put_group_settings(conn, name, settings.to_json(masked=False), who.subject)
        _audited(conn, request, "group.connection_settings.put", f"group:{name}", stored, settings)
        return settings

    settings = await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(_group_answer(name, settings))


@router.delete(
    "/api/groups/{name}/connection-settings",
    Operation(
        "Remove a group's connection settings",
        "Its members are offered the server's defaults again (agents keep what they applied "
        "until then: an OpAMP offer without an endpoint leaves theirs unchanged). Audited. "
        "Needs the operator role.",
        params=(GROUP_PARAM,),
        response=GroupConnectionSettings,
        errors=WRITE_ERRORS,
        links=TO_GROUP,
    ),
)
async def delete_group_connection_settings(request: Request) -> Response:
    name = path_name(request)
    require_role(
        request, "operator", action="group.connection_settings.delete", target=f"group:{name}"
    )
    services = services_of(request)

    def work(conn: cq.Conn) -> None:
        _group_of(conn, name)
        stored = sq.group_settings(conn, name, lock=True)
        if sq.delete_group_settings(conn, name):
            _audited(
                conn, request, "group.connection_settings.delete", f"group:{name}", stored, None
            )

    await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(_group_answer(name, ConnectionSettings()))


@router.get(
    "/api/agents/{id}/connection-settings",
    Operation(
        "An agent's connection settings",
        "Per part (`opamp`, `metrics`, `traces`, `logs`): the offered endpoint (header values "
        f"shown as `{MASK}`), where it comes from and its status; the offer's hash for the "
        "agent's capabilities and the `ConnectionSettingsStatus` it last reported; its own "
        "override; its client certificate (serial, expiry).",
        params=(AGENT_ID_PARAM,),
        response=AgentConnectionSettings,
        errors=(400, 404, 503),
    ),
)
async def get_agent_connection_settings(request: Request) -> Response:
    uid = path_agent_id(request)
    return JSONResponse(await load_agent_view(services_of(request), uid))


@router.put(
    "/api/agents/{id}/connection-settings",
    Operation(
        "Set an agent's own connection settings",
        "The same body as a group's; each part given (a signal, `opamp`) replaces the one of "
        "the agent's group for this agent. Audited (`agent.connection_settings.put`). Needs "
        "the operator role.",
        params=(AGENT_ID_PARAM,),
        response=AgentConnectionSettings,
        errors=WRITE_ERRORS,
        body=SETTINGS_BODY,
        links=TO_AGENT,
    ),
)
async def put_agent_connection_settings(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    who = require_role(request, "operator", action="agent.connection_settings.put", target=target)
    services = services_of(request)
    body = await read_object(request, MAX_BODY_BYTES)

    def work(conn: cq.Conn) -> None:
        if not cq.agent_known(conn, uid):
            raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
        stored = sq.agent_settings(conn, uid, lock=True)
        settings = _parse(body, stored)
        sq.put_agent_settings(conn, uid, settings.to_json(masked=False), who.subject)
        _audited(conn, request, "agent.connection_settings.put", target, stored, settings)

    await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(await load_agent_view(services, uid))


@router.delete(
    "/api/agents/{id}/connection-settings",
    Operation(
        "Remove an agent's own connection settings",
        "The agent follows its group's again. Audited. Needs the operator role.",
        params=(AGENT_ID_PARAM,),
        response=AgentConnectionSettings,
        errors=WRITE_ERRORS,
        links=TO_AGENT,
    ),
)
async def delete_agent_connection_settings(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "operator", action="agent.connection_settings.delete", target=target)
    services = services_of(request)

    def work(conn: cq.Conn) -> None:
        if not cq.agent_known(conn, uid):
            raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
        stored = sq.agent_settings(conn, uid, lock=True)
        if sq.delete_agent_settings(conn, uid):
            _audited(conn, request, "agent.connection_settings.delete", target, stored, None)

    await run_db(services, work)
    await refresh_configs(services)
    return JSONResponse(await load_agent_view(services, uid))


@router.post(
    "/api/agents/{id}/rotate-certificate",
    Operation(
        "Rotate an agent's client certificate",
        "The instance holding the agent (routed there over Postgres LISTEN/NOTIFY) makes a "
        "new key and a certificate signed by the agent CA and offers both in "
        "`connection_settings.opamp.certificate`: pushed at once over WebSocket, in the next "
        "poll's reply over HTTP. 202 once that instance is told. 409 `not_connected` when the "
        "agent is not connected, `agent_ca_not_configured` without `--agent-ca-cert-file`, "
        "`capability_missing` when the agent does not accept OpAMP connection settings, "
        "`rotation_pending` while a certificate for it is being made. "
        "Audited (`agent.certificate.rotate`). Needs the admin role.",
        params=(AGENT_ID_PARAM,),
        response=RotationAccepted,
        errors=(400, 403, 404, 409, 503),
        status=202,
    ),
)
async def rotate_certificate(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "admin", action="agent.certificate.rotate", target=target)
    services = services_of(request)
    assert services.connection_settings is not None
    if services.connection_settings.ca is None:
        raise APIError(
            409,
            "agent_ca_not_configured",
            "no agent CA: set --agent-ca-cert-file and --agent-ca-key-file",
        )
    owner = await run_db(services, lambda conn: _rotation_target(conn, uid))
    if owner == services.settings.instance_id:
        if not services.connection_settings.rotate(uid):
            raise APIError(
                409,
                "rotation_pending",
                "a certificate for this agent is being made already (or the signing queue is "
                "full, or the agent just disconnected); try again shortly",
            )
    else:
        await services.cluster.notify(owner, "certificates", uids=[uid.hex()], action="rotate")
    after = {"serving_instance": owner}
    row = audit.entry(request, "agent.certificate.rotate", target, after=after)
    await services.db.run(lambda conn: cq.append_audit(conn, row))
    return JSONResponse(RotationAccepted(format_instance_uid(uid), owner), 202)


def _rotation_target(conn: cq.Conn, uid: bytes) -> str:
    """The instance holding the agent, once it may be rotated (404 / 409 otherwise)."""
    row = conn.execute(
        "SELECT status, serving_instance, capabilities FROM agents WHERE instance_uid = %s", (uid,)
    ).fetchone()
    if row is None:
        raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
    status, owner, caps = row
    if status != "online" or owner is None:
        raise cq.Conflict("not_connected", f"agent {format_instance_uid(uid)} is not connected")
    if not int(caps) & AGENT_ACCEPTS_OPAMP_CONNECTION_SETTINGS:
        raise cq.Conflict(
            "capability_missing",
            "the agent does not accept OpAMP connection settings (AcceptsOpAMPConnectionSettings)",
        )
    return str(owner)
