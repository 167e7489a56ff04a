"""``/api/agents...``: agent status, connections, lists and connection history, fleet-wide.

Every answer is the same whichever instance serves it (several instances, or ``--workers``,
share one Postgres): all of it comes from Postgres, which every instance's batch writer keeps
up to date within one flush (``flush_interval_s``, 1 s by default). That is the staleness bound:
an agent that connected a moment ago appears within a flush, on every instance alike.

* ``/status/summary``: ``fleet_stats.agents_total`` (kept by the writers) and the online counts
  each instance publishes with the flush that changed them: O(number of instances), whatever
  the fleet size. An agent that moves between instances may count on both for up to a flush of
  the instance it left.
* Lists (``/online``, ``/offline``, ``/`` with filters): keyset pages of ``agents``; their
  unfiltered totals come from the summary.
* ``/{id}``, ``/{id}/active-connection``, ``/{id}/connection-history``: the agent's row and its
  history rows.
* ``POST /{id}/disconnect``: routed to the instance that holds the agent (a notice over
  LISTEN/NOTIFY), which closes its connection.

Reads run in worker threads through ``Database.run``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from ..protocol import pb
from ..protocol.codec import format_instance_uid
from ..storage import command_queries, config_queries, queries
from .assignments import remote_config_state
from .audit import entry as audit_entry
from .connection_settings import load_agent_view
from .errors import APIError, agent_not_found
from .models import (
    ActiveConnection,
    AgentDetail,
    AgentList,
    AgentSummary,
    ConnectionHistory,
    ConnectionHistoryPage,
    DisconnectAccepted,
    StatusCounts,
    StatusSummary,
    TransportCounts,
)
from .packages import load_agent_packages
from .params import (
    AGENT_CURSOR_PATTERN,
    AGENT_ID_PARAM,
    DRIFTED_PARAM,
    HISTORY_CURSOR_PATTERN,
    LABEL_PARAM,
    MAX_OFFLINE_PARAM,
    MAX_OFFSET,
    Q_PARAM,
    STATUS_PARAM,
    Page,
    PageParam,
    decode_agent_cursor,
    decode_history_cursor,
    encode_agent_cursor,
    encode_history_cursor,
    parse_labels,
    parse_page,
    parse_q,
    parse_status,
    path_agent_id,
    query_bool,
    query_integer,
)
from .responses import JSONResponse, encode_json
from .roles import require_role
from .routing import Operation, Router, links
from .state import services_of, shared_of

logger = logging.getLogger(__name__)

# What a client does next with an agent of a list (the OpenAPI links of the lists).
AGENT_OPERATIONS = (
    "get_agent",
    "agent_active_connection",
    "agent_connection_history",
    "get_agent_config",
    "get_agent_packages",
    "put_agent_labels",
    "put_agent_config",
    "set_agent_packages",
    "disconnect_agent",
    "restart_agent",
    "send_custom_message",
    "list_custom_messages",
)

_U64 = (1 << 64) - 1
_CAPABILITIES = [
    (v.number, v.name.removeprefix("AgentCapabilities_"))
    for v in pb.AgentCapabilities.DESCRIPTOR.values
    if v.number
]
_KNOWN_CAPABILITY_BITS = sum(bit for bit, _ in _CAPABILITIES)


def capability_names(bits: int) -> list[str]:
    """Names of the AgentCapabilities bits set in ``bits`` (unknown bits as ``0x...``)."""
    bits &= _U64
    names = [name for bit, name in _CAPABILITIES if bits & bit]
    unknown = bits & ~_KNOWN_CAPABILITY_BITS
    while unknown:
        low = unknown & -unknown
        names.append(f"0x{low:x}")
        unknown ^= low
    return names


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else ts.astimezone(UTC)


def _wall(seconds: float | None) -> datetime | None:
    return None if not seconds else datetime.fromtimestamp(seconds, UTC)


# ------------------------------------------------------------------------------ conversions


def summary_from_row(row: queries.AgentRow) -> AgentSummary:
    return AgentSummary(
        id=row.uid_text,
        name=row.agent_name,
        status=row.status,  # type: ignore[arg-type]
        transport=row.transport,  # type: ignore[arg-type]
        last_seen_at=_utc(row.last_seen_at),
        last_connected_at=_utc(row.last_connected_at),
        last_disconnected_at=_utc(row.last_disconnected_at),
        disconnect_reason=row.disconnect_reason,
        drifted_at=_utc(row.drifted_at),
    )


def _history_item(agent_id: str, row: queries.HistoryRow) -> ConnectionHistory:
    return ConnectionHistory(
        id=row.id,
        agent_id=agent_id,
        connected_at=row.connected_at.astimezone(UTC),
        disconnected_at=_utc(row.disconnected_at),
        duration_seconds=row.duration_s,
        disconnect_reason=row.disconnect_reason,
        remote_addr=row.remote_addr,
        transport=row.transport,  # type: ignore[arg-type]
        serving_instance=row.serving_instance,
    )


def detail(row: queries.AgentDetailRow) -> AgentDetail:
    return AgentDetail(
        id=row.uid_text,
        name=row.agent_name,
        status=row.status,  # type: ignore[arg-type]
        source="database",
        transport=row.transport,  # type: ignore[arg-type]
        remote_addr=row.remote_addr,
        serving_instance=row.serving_instance,
        capabilities=capability_names(row.capabilities),
        capabilities_bits=row.capabilities & _U64,
        description=row.description,
        health=row.health,
        effective_config=row.effective_config,
        remote_config_status=row.remote_config_status,
        labels=row.labels,
        last_seen_at=_utc(row.last_seen_at),
        last_connected_at=_utc(row.last_connected_at),
        last_disconnected_at=_utc(row.last_disconnected_at),
        disconnect_reason=row.disconnect_reason,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
        drifted_at=_utc(row.drifted_at),
        applied_config_hash=row.applied_config_hash,
    )


def _agent_page(rows: list[queries.AgentRow], total: int, page: Page) -> AgentList:
    next_cursor = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        next_cursor = encode_agent_cursor(rows[-1].uid_text, total)
    return AgentList(
        agents=[summary_from_row(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_cursor=next_cursor,
    )


def _history_page(
    uid: bytes, rows: list[queries.HistoryRow], total: int, page: Page
) -> ConnectionHistoryPage:
    next_cursor = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        next_cursor = encode_history_cursor(rows[-1].connected_at, rows[-1].id, total)
    text_id = format_instance_uid(uid)
    return ConnectionHistoryPage(
        histories=[_history_item(text_id, r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        next_cursor=next_cursor,
    )


# ---------------------------------------------------------------------------------- routes

router = Router()

TO_AGENT = links(AGENT_OPERATIONS, id="$response.body#/agents/0/id")
ID_ERRORS = (400, 404, 503)


async def _active(request: Request, uid: bytes, status: int) -> queries.ActiveRow:
    """The agent's live connection; 404 for an unknown agent, else ``status`` (a 404 or a 409)
    ``not_connected`` when it is not connected."""
    db = services_of(request).db
    active = await db.run(lambda conn: queries.active_connection(conn, uid))
    if active is not None:
        return active
    if not await db.run(lambda conn: queries.agent_exists(conn, uid)):
        raise agent_not_found(uid)
    raise APIError(status, "not_connected", f"agent {format_instance_uid(uid)} is not connected")


@router.get(
    "/api/agents/status/summary",
    Operation(
        "Fleet status counts",
        "The same from every instance, as of the last committed flushes (at most "
        "`flush_interval_s` old): `total` is kept by the writers, `online` is the sum of "
        "what each running instance published. O(instances), whatever the fleet size.",
        response=StatusSummary,
        errors=(503,),
    ),
)
async def agent_status_summary(request: Request) -> Response:
    shared = shared_of(request)
    try:
        counts = await services_of(request).db.run(queries.fleet_counts)
    except (psycopg.Error, PoolTimeout):
        if shared.last_counts is None:
            raise
        counts = shared.last_counts  # the database is away: the last counts, with their time
    else:
        shared.last_counts = counts
    return JSONResponse(
        StatusSummary(
            total=counts.total,
            online=counts.online,
            offline=counts.offline,
            status_counts=StatusCounts(online=counts.online, offline=counts.offline),
            online_by_transport=TransportCounts(ws=counts.online_ws, http=counts.online_http),
            counts_as_of=_utc(counts.as_of),
            instances=counts.instances,
        )
    )


async def _list_page(request: Request, flt: queries.AgentFilter) -> Response:
    services = services_of(request)
    page = parse_page(request.query_params, services.settings.api_max_page_size)
    after: str | None = None
    total: int | None = None
    if page.cursor is not None:
        after, total = decode_agent_cursor(page.cursor)
    elif flt.only_status:
        counts = await services.db.run(queries.fleet_counts)
        total = {"online": counts.online, "offline": counts.offline}.get(
            flt.status or "", counts.total
        )

    def fetch(conn: queries.Conn) -> tuple[list[queries.AgentRow], int | None]:
        return queries.list_agents(
            conn, flt, limit=page.limit, offset=page.offset, after=after, count=total is None
        )

    rows, counted = await services.db.read(fetch)  # the page and its count agree
    return JSONResponse(_agent_page(rows, total if total is not None else counted or 0, page))


def _status_list(summary: str) -> Operation:
    return Operation(
        summary,
        "Fleet-wide, from Postgres (up to one writer flush behind), sorted by agent id.",
        params=(PageParam(AGENT_CURSOR_PATTERN),),
        response=AgentList,
        errors=(400, 503),
        links=TO_AGENT,
    )


@router.get("/api/agents/online", _status_list("Online agents"))
async def online_agents(request: Request) -> Response:
    return await _list_page(request, queries.AgentFilter(status="online"))


@router.get("/api/agents/offline", _status_list("Offline agents"))
async def offline_agents(request: Request) -> Response:
    return await _list_page(request, queries.AgentFilter(status="offline"))


@router.get(
    "/api/agents",
    Operation(
        "List agents",
        "All agents stored in Postgres, sorted by id, filtered by status, labels, name prefix, "
        "configuration drift and how long they have been offline.",
        params=(
            PageParam(
                AGENT_CURSOR_PATTERN,
                (STATUS_PARAM, LABEL_PARAM, Q_PARAM, DRIFTED_PARAM, MAX_OFFLINE_PARAM),
            ),
        ),
        response=AgentList,
        errors=(400, 503),
        links=TO_AGENT,
    ),
)
async def list_agents(request: Request) -> Response:
    params = request.query_params
    flt = queries.AgentFilter(
        status=parse_status(params),
        labels=tuple(parse_labels(params)),
        name_prefix=parse_q(params),
        drifted=query_bool(params, "drifted") if "drifted" in params else None,
        max_offline_s=query_integer(params, "max_offline_s", 0, 0, MAX_OFFSET)
        if "max_offline_s" in params
        else None,
    )
    return await _list_page(request, flt)


@router.get(
    "/api/agents/{id}",
    Operation(
        "Agent detail",
        "The agent's stored state (up to one writer flush behind), the same from every "
        "instance; `serving_instance` holds its connection.",
        params=(AGENT_ID_PARAM,),
        response=AgentDetail,
        errors=ID_ERRORS,
    ),
)
async def get_agent(request: Request) -> Response:
    uid = path_agent_id(request)
    services = services_of(request)

    def fetch(
        conn: queries.Conn,
    ) -> tuple[
        queries.AgentDetailRow | None,
        config_queries.AgentOutcome | None,
        command_queries.AgentExtras | None,
    ]:
        # one snapshot: the row, its config outcome and its extras from the same flush
        return (
            queries.agent_detail(conn, uid),
            config_queries.agent_outcome(conn, uid),
            command_queries.agent_extras(conn, uid),
        )

    row, outcome, extras = await services.db.read(fetch)
    if row is None:
        raise agent_not_found(uid)
    shown = detail(row)
    if outcome is not None and services.configs is not None:
        shown.remote_config = remote_config_state(services.configs.directory, uid, outcome)
    if services.packages is not None:
        shown.packages = await load_agent_packages(services.packages, uid)
    if services.connection_settings is not None:
        shown.connection_settings = await load_agent_view(services, uid)
    if extras is not None:
        shown.last_restart_requested_at = _utc(extras.last_restart_requested_at)
        shown.custom_capabilities = extras.custom_capabilities
        shown.available_components = extras.available_components
    # A large agent state (up to the policy's bounds, a few MiB of JSON) is encoded in a
    # worker thread, never on the event loop.
    body = await anyio.to_thread.run_sync(lambda: encode_json(shown))
    return Response(body, media_type="application/json")


@router.get(
    "/api/agents/{id}/active-connection",
    Operation(
        "The agent's live connection",
        "Wherever it is connected (`serving_instance`); 404 `not_connected` when it is "
        "not connected.",
        params=(AGENT_ID_PARAM,),
        response=ActiveConnection,
        errors=ID_ERRORS,
    ),
)
async def agent_active_connection(request: Request) -> Response:
    uid = path_agent_id(request)
    active = await _active(request, uid, 404)
    connected = _utc(active.connected_at)
    assert connected is not None
    return JSONResponse(
        ActiveConnection(
            agent_id=format_instance_uid(uid),
            connected_at=connected,
            transport=active.transport,  # type: ignore[arg-type]
            remote_addr=active.remote_addr or "",
            last_seen_at=_utc(active.last_seen_at) or connected,
            duration_seconds=max(0.0, (datetime.now(UTC) - connected).total_seconds()),
            serving_instance=active.serving_instance,
        )
    )


@router.get(
    "/api/agents/{id}/connection-history",
    Operation(
        "The agent's connection history",
        "Newest first (connected_at, id descending). Page with limit/offset, or follow "
        "`next_cursor` (keyset, constant cost per page).",
        params=(AGENT_ID_PARAM, PageParam(HISTORY_CURSOR_PATTERN)),
        response=ConnectionHistoryPage,
        errors=ID_ERRORS,
    ),
)
async def agent_connection_history(request: Request) -> Response:
    uid = path_agent_id(request)
    services = services_of(request)
    page = parse_page(request.query_params, services.settings.api_max_page_size)
    after: tuple[datetime, int] | None = None
    carried: int | None = None
    if page.cursor is not None:
        at, row_id, carried = decode_history_cursor(page.cursor)
        after = (at, row_id)

    def fetch(conn: queries.Conn) -> queries.HistoryPage:
        return queries.history_page(
            conn, uid, limit=page.limit, offset=page.offset, after=after, count=after is None
        )

    result = await services.db.read(fetch)  # the page and its count agree
    if not result.agent_known:
        raise agent_not_found(uid)
    total = result.total if result.total is not None else carried or 0
    return JSONResponse(_history_page(uid, result.rows, total, page))


@router.post(
    "/api/agents/{id}/disconnect",
    Operation(
        "Disconnect an agent",
        "Closes the agent's connection on the instance that holds it (routed there "
        'over Postgres LISTEN/NOTIFY) and ends its session ("disconnected by an '
        'operator"); the agent may reconnect. 202 once the instance is told; 409 '
        "`not_connected` when it is not connected.",
        params=(AGENT_ID_PARAM,),
        response=DisconnectAccepted,
        errors=(400, 404, 409, 503),
        status=202,
    ),
)
async def disconnect_agent(request: Request) -> Response:
    uid = path_agent_id(request)
    target = f"agent:{format_instance_uid(uid)}"
    require_role(request, "admin", action="agent.disconnect", target=target)
    active = await _active(request, uid, 409)
    services = services_of(request)
    owner = active.serving_instance
    if owner == services.settings.instance_id:
        services.fleet.disconnect([uid])
    else:
        await services.cluster.notify(owner, "disconnect", uids=[uid.hex()])
    row = audit_entry(request, "agent.disconnect", target, after={"serving_instance": owner})
    await services.db.run(lambda conn: config_queries.append_audit(conn, row))
    return JSONResponse(
        DisconnectAccepted(agent_id=format_instance_uid(uid), serving_instance=owner), 202
    )
