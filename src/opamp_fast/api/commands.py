"""Day-2 commands: restart an agent or a group's members, custom messages both ways.

* ``POST /api/agents/{id}/restart``: a ``ServerToAgent.command`` Restart, for an agent that
  reports ``AcceptsRestartCommand``; pushed at once over WebSocket, sent with the next poll
  over plain HTTP, routed to the instance holding the agent (``fleet.commands``). Nothing is
  kept for an agent that is offline (409).
* ``POST /api/agents/{id}/custom-messages``: a ``CustomMessage`` for one of the custom
  capabilities the agent declared; ``GET`` lists the agent's kept messages both ways (those it
  sent also stream as ``agent.custom_message`` events).
* ``/api/groups/{name}/restart``: ``POST`` starts restarting the group's members in batches
  (``batch_percent`` of them, ``pause_s`` apart; ``storage.command_queries``), ``GET`` shows
  the progress of the latest, ``DELETE`` cancels the running one on every instance.

Every change needs the operator role and is an audit row, written in the transaction that
records it (and sends the notice to the instance holding the agent).
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from ..fleet.handler import FleetHandler
from ..protocol import AGENT_ACCEPTS_RESTART_COMMAND, NotAccepted, Transport, pb
from ..protocol.codec import format_instance_uid
from ..services import Services
from ..settings import DEFAULT_CUSTOM_MESSAGE_BYTES
from ..storage import command_queries as cmq
from ..storage import config_queries as cq
from ..storage import queries
from ..storage.config_queries import NotFound
from . import audit
from .body import body_integer, only_keys, read_object
from .command_models import (
    CustomMessageAccepted,
    CustomMessageInfo,
    CustomMessageList,
    Delivery,
    GroupRestartInfo,
    RestartAccepted,
)
from .configs import path_name, run_db
from .errors import APIError, agent_not_found, invalid_parameter
from .groups import GROUP_PARAM
from .params import AGENT_ID_PARAM, Param, path_agent_id, text_schema
from .responses import JSONResponse
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of, shared_of

agent_router = Router()
group_router = Router(tags=("groups",))

MAX_TEXT = 256  # a capability or message type
COMMAND_ERRORS = (400, 403, 404, 409, 503)
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


# ------------------------------------------------------------------------------------ agents


def _not_connected(uid: bytes) -> APIError:
    return APIError(409, "not_connected", f"agent {format_instance_uid(uid)} is not connected")


async def _holder(services: Services, uid: bytes) -> tuple[str, cmq.AgentFacts | None]:
    """The instance holding the agent, and its stored facts (None when it is held here: the
    registry knows better). 404 for an unknown agent, 409 ``not_connected`` when offline."""
    record = services.fleet.registry.get(uid)
    if record is not None and record.online:
        return services.settings.instance_id, None
    facts = await services.db.run(lambda conn: cmq.agent_facts(conn, uid))
    if facts is None:
        raise agent_not_found(uid)
    if facts.status != "online" or facts.serving_instance is None:
        raise _not_connected(uid)
    return facts.serving_instance, facts


def _delivery_here(fleet: FleetHandler, uid: bytes) -> Delivery:
    record = fleet.registry.get(uid)
    ws = record is not None and record.transport is Transport.WS
    return "pushed" if ws else "next_poll"


def _refused(exc: NotAccepted) -> APIError:
    if exc.code == "too_many_pending":
        return APIError(429, exc.code, str(exc), headers={"Retry-After": "30"})
    return APIError(409, exc.code, str(exc))


@agent_router.post(
    "/api/agents/{id}/restart",
    Operation(
        "Restart an agent",
        "Sends `ServerToAgent.command` Restart to an agent that reports "
        "`AcceptsRestartCommand`: pushed at once over WebSocket, with the reply to its next "
        "poll over plain HTTP, through the instance holding it. 202 once sent (or routed); "
        "409 `restart_not_supported` without the capability, 409 `not_connected` when "
        "offline (nothing is kept for later). The agent's `last_restart_requested_at` is "
        'set, and its session ending within 2 minutes is recorded as "restart requested". '
        "Needs the operator role.",
        params=(AGENT_ID_PARAM,),
        response=RestartAccepted,
        errors=COMMAND_ERRORS,
        status=202,
        links=links(["get_agent", "agent_connection_history"], id="$request.path.id"),
    ),
)
async def restart_agent(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "operator", action="agent.restart", target=target)
    services = services_of(request)
    me = services.settings.instance_id
    owner, facts = await _holder(services, uid)
    if facts is not None and not facts.capabilities & AGENT_ACCEPTS_RESTART_COMMAND:
        raise APIError(
            409,
            "restart_not_supported",
            "the agent does not accept restart commands (no AcceptsRestartCommand capability)",
        )
    delivery: Delivery = "routed"
    if owner == me:
        try:
            if not services.fleet.restart(uid):
                raise _not_connected(uid)
        except NotAccepted as exc:
            raise _refused(exc) from None
        delivery = _delivery_here(services.fleet, uid)
    at = datetime.now(UTC)

    def work(conn: cq.Conn) -> None:
        cmq.record_restart(conn, [uid], sender=me, serving={uid: owner})
        after = {"serving_instance": owner, "delivery": delivery}
        cq.append_audit(conn, audit.entry(request, "agent.restart", target, after=after))

    await run_db(services, work)
    body = RestartAccepted(format_instance_uid(uid), owner, delivery, at)
    return JSONResponse(body, 202)


MESSAGE_BODY = {
    "type": "object",
    "required": ["capability", "type", "data"],
    "additionalProperties": False,
    "properties": {
        "capability": {**text_schema(MAX_TEXT), "minLength": 1},
        "type": {**text_schema(MAX_TEXT), "minLength": 1},
        "data": {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": BASE64_PATTERN,
            # the default max_custom_message_bytes, encoded (a smaller bound answers 413)
            "maxLength": 4 * math.ceil(DEFAULT_CUSTOM_MESSAGE_BYTES / 3),
        },
    },
}


def _text_field(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or "\x00" in value:
        raise APIError(400, "invalid_body", f"{key}: must be 1-{MAX_TEXT} characters, no NUL")
    return value


def _parse_message(body: dict[str, object], max_bytes: int) -> pb.CustomMessage:
    only_keys(body, {"capability", "type", "data"})
    capability = _text_field(body, "capability")
    kind = _text_field(body, "type")
    data = body.get("data")
    if not isinstance(data, str):
        raise APIError(400, "invalid_base64", "data: must be a base64 string")
    try:
        raw = base64.b64decode(data.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise APIError(400, "invalid_base64", "data: not valid base64 (RFC 4648)") from None
    if len(raw) > max_bytes:
        raise APIError(413, "too_large", f"data: {len(raw)} bytes, more than {max_bytes}")
    return pb.CustomMessage(capability=capability, type=kind, data=raw)


@agent_router.post(
    "/api/agents/{id}/custom-messages",
    Operation(
        "Send a custom message to an agent",
        'Body: `{"capability": "<reverse FQDN>", "type": "<type>", "data": "<base64>"}`. '
        "The agent must have declared the capability in its `CustomCapabilities` (409 "
        "`capability_not_declared`); pushed at once over WebSocket, with its next polls over "
        "plain HTTP (one per reply; 429 `too_many_pending` beyond 16 waiting), through the "
        "instance holding it. `data` is at most `max_custom_message_bytes` (413), invalid "
        "base64 is a 400 `invalid_base64`; sends to one agent are rate-limited like its own "
        "messages (429 `rate_limited`). Needs the operator role.",
        params=(AGENT_ID_PARAM,),
        response=CustomMessageAccepted,
        errors=(*COMMAND_ERRORS, 413, 429),
        body=MESSAGE_BODY,
        status=202,
        links=links(["list_custom_messages"], id="$request.path.id"),
    ),
)
async def send_custom_message(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    who = require_role(request, "operator", action="agent.custom_message", target=target)
    services = services_of(request)
    limit = services.settings.max_custom_message_bytes
    body = await read_object(request, 4 * math.ceil(limit / 3) + 2048)
    message = _parse_message(body, limit)
    owner, facts = await _holder(services, uid)
    if facts is not None and message.capability not in facts.custom_capabilities:
        raise APIError(
            409,
            "capability_not_declared",
            f"the agent did not declare the custom capability {message.capability!r}",
        )
    if not shared_of(request).send_rate.take(uid):
        raise APIError(429, "rate_limited", "too many messages to this agent", {"Retry-After": "1"})
    me = services.settings.instance_id
    delivery: Delivery = "routed"
    if owner == me:
        try:
            outcome = services.fleet.send_custom_message(uid, message)
        except NotAccepted as exc:
            raise _refused(exc) from None
        if outcome is None:
            raise _not_connected(uid)
        delivery = "pushed" if outcome == "sent" else "next_poll"

    def work(conn: cq.Conn) -> int:
        fields = (message.capability, message.type, message.data)
        mid = cmq.store_outgoing(conn, uid, fields, serving_instance=owner, sent_by=who.subject)
        if owner != me:
            cmq.notify_instance(conn, owner, cmq.CUSTOM_MESSAGE_NOTICE, me, id=mid)
        after = {"id": mid, "capability": message.capability, "type": message.type,
                 "size": len(message.data), "serving_instance": owner}  # fmt: skip
        cq.append_audit(conn, audit.entry(request, "agent.custom_message", target, after=after))
        return mid

    mid = await run_db(services, work)
    body_out = CustomMessageAccepted(format_instance_uid(uid), mid, owner, delivery)
    return JSONResponse(body_out, 202)


DIRECTION_PARAM = Param(
    "direction",
    "query",
    "Only the messages the agent sent (`from_agent`) or was sent (`to_agent`).",
    {"type": "string", "enum": ["from_agent", "to_agent"]},
)


def _message_info(row: cmq.CustomMessageRow) -> CustomMessageInfo:
    return CustomMessageInfo(
        id=row.id,
        direction=row.direction,  # type: ignore[arg-type]
        at=row.at.astimezone(UTC),
        capability=row.capability,
        type=row.type,
        size=len(row.data),
        data=base64.b64encode(row.data).decode("ascii"),
        serving_instance=row.serving_instance,
        sent_by=row.sent_by,
    )


@agent_router.get(
    "/api/agents/{id}/custom-messages",
    Operation(
        "An agent's custom messages",
        "The newest 100 the agent sent (`from_agent`, as stored with the writer's next "
        "flush) and the newest 100 sent to it (`to_agent`), newest first; `data` is base64.",
        params=(AGENT_ID_PARAM, DIRECTION_PARAM),
        response=CustomMessageList,
        errors=(400, 404, 503),
    ),
)
async def list_custom_messages(request: Request) -> Response:
    uid = path_agent_id(request)
    direction = request.query_params.get("direction")
    if direction is not None and direction not in ("from_agent", "to_agent"):
        raise invalid_parameter("direction", "must be from_agent or to_agent")

    def work(conn: cq.Conn) -> list[cmq.CustomMessageRow]:
        if not queries.agent_exists(conn, uid):
            raise NotFound("agent_not_found", f"no agent {format_instance_uid(uid)}")
        return cmq.custom_messages(conn, uid, direction)

    rows = await run_db(services_of(request), work)
    return JSONResponse(
        CustomMessageList(format_instance_uid(uid), [_message_info(r) for r in rows])
    )


# ------------------------------------------------------------------------------------ groups


def _restart_info(row: cmq.GroupRestartRow) -> GroupRestartInfo:
    done = row.requested + row.skipped
    progress = 100.0 if row.state == "completed" or not row.targets else 100 * done / row.targets
    return GroupRestartInfo(
        id=row.id,
        group=row.group_name,
        state=row.state,  # type: ignore[arg-type]
        batch_percent=row.batch_percent,
        pause_s=row.pause_s,
        targets=row.targets,
        batches=row.batches,
        requested=row.requested,
        skipped=row.skipped,
        progress_percent=round(progress, 1),
        next_batch_at=row.next_batch_at.astimezone(UTC) if row.state == "running" else None,
        created_by=row.created_by,
        created_at=row.created_at.astimezone(UTC),
        updated_at=row.updated_at.astimezone(UTC),
        ended_at=None if row.ended_at is None else row.ended_at.astimezone(UTC),
        ended_by=row.ended_by,
    )


def _group(conn: cq.Conn, name: str) -> cq.GroupRow:
    group = cq.get_group(conn, name)
    if group is None:
        raise NotFound("group_not_found", f"no group {name!r}")
    return group


RESTART_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "batch_percent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "pause_s": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 30},
    },
}
TO_RESTART = links(["get_group_restart", "cancel_group_restart"], name="$request.path.name")


@group_router.post(
    "/api/groups/{name}/restart",
    Operation(
        "Restart a group's members in batches",
        'Body: `{"batch_percent": 10, "pause_s": 30}` (both optional). Restarts the members '
        "(agents matching the selector) that are online and accept restarts now, "
        "`batch_percent` of them at a time (rounded up), `pause_s` seconds apart; the first "
        "batch before the answer. Members that are offline when their batch comes are "
        "skipped. Driven from Postgres by whichever instance is free, so it goes on whatever "
        "happens to the instance that was asked. 409 `restart_running` while one runs. Needs "
        "the operator role.",
        params=(GROUP_PARAM,),
        response=GroupRestartInfo,
        errors=COMMAND_ERRORS,
        body=RESTART_BODY,
        status=202,
        links=TO_RESTART,
    ),
)
async def restart_group(request: Request) -> Response:
    name = path_name(request)
    target = f"group:{name}"
    who = require_role(request, "operator", action="group.restart", target=target)
    body = await read_object(request, 4096)
    only_keys(body, {"batch_percent", "pause_s"})
    batch_percent = body_integer(body.get("batch_percent", 10), "batch_percent", 1, 100)
    pause_s = body_integer(body.get("pause_s", 30), "pause_s", 0, 86400)
    services = services_of(request)
    me = services.settings.instance_id

    def work(conn: cq.Conn) -> tuple[cmq.GroupRestartRow, list[bytes]]:
        group = _group(conn, name)
        row, local = cmq.start_group_restart(
            conn, name, group.selector, batch_percent=batch_percent, pause_s=pause_s,
            actor=who.subject, sender=me,
        )  # fmt: skip
        after = {**row.summary(), "batch_percent": batch_percent, "pause_s": pause_s}
        cq.append_audit(conn, audit.entry(request, "group.restart", target, after=after))
        return row, local

    row, local = await run_db(services, work)
    if services.commands is not None:
        services.commands.started(local, batch_sent=row.batches > 0)
    else:
        services.fleet.restart_many(local)
    return JSONResponse(_restart_info(row), 202)


@group_router.get(
    "/api/groups/{name}/restart",
    Operation(
        "A group's latest restart",
        "Its progress: targets, batches sent, agents requested and skipped, the next "
        "batch's time. 404 `restart_not_found` when the group was never restarted.",
        params=(GROUP_PARAM,),
        response=GroupRestartInfo,
        errors=(400, 404, 503),
    ),
)
async def get_group_restart(request: Request) -> Response:
    name = path_name(request)

    def work(conn: cq.Conn) -> cmq.GroupRestartRow:
        _group(conn, name)
        row = cmq.latest_group_restart(conn, name)
        if row is None:
            raise NotFound("restart_not_found", f"group {name!r} has never been restarted")
        return row

    return JSONResponse(_restart_info(await run_db(services_of(request), work)))


@group_router.delete(
    "/api/groups/{name}/restart",
    Operation(
        "Cancel a group's restart",
        "No further batch is sent, by any instance (agents already sent the command restart "
        "anyway). 404 `restart_not_found` when the group was never restarted, 409 "
        "`restart_not_running` when its latest restart has ended. Needs the operator role.",
        params=(GROUP_PARAM,),
        response=GroupRestartInfo,
        errors=COMMAND_ERRORS,
    ),
)
async def cancel_group_restart(request: Request) -> Response:
    name = path_name(request)
    target = f"group:{name}"
    who = require_role(request, "operator", action="group.restart.cancel", target=target)

    def work(conn: cq.Conn) -> cmq.GroupRestartRow:
        _group(conn, name)
        row = cmq.cancel_group_restart(conn, name, who.subject)
        entry = audit.entry(request, "group.restart.cancel", target, after=row.summary())
        cq.append_audit(conn, entry)
        return row

    return JSONResponse(_restart_info(await run_db(services_of(request), work)))
