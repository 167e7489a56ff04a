"""``/api/agents...``: agent status, live connections, lists and connection history.

Where each answer comes from, and why:

* **Live registry** (this process's memory, exact, no I/O): ``/online``,
  ``/{id}/active-connection``, the ``online`` figure of ``/status/summary``, and the live parts
  of ``/{id}`` (state reported over the current connection wins over the stored row).
* **Postgres** (every agent ever seen, also by earlier runs; written by the batch writer, so up
  to one flush interval behind): ``/offline``, ``/`` with filters, ``/{id}/connection-history``,
  and the stored parts of ``/{id}``. Reads run in worker threads through ``Database.run``.
* **Cached counts**: ``total``/``offline`` in the summary and the totals of unfiltered lists come
  from one ``count(*)`` per status that is reused for a while, so the summary stays O(1)
  whatever the fleet size. The reuse window adapts to what the count costs: ``COST_FACTOR`` x
  its last duration, at most ``MAX_AGE_S``. A small table is therefore recounted on nearly every
  request (exact), a million-agent table about every few seconds; counts that cost more than
  ``INLINE_COST_S`` are refreshed in the background while the stale value is served.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup
from starlette.requests import Request
from starlette.responses import Response

from ..protocol import pb
from ..protocol.codec import format_instance_uid, parse_instance_uid_text
from ..registry import AgentRecord, Registry
from ..services import Services
from ..storage import queries
from ..storage.rows import (
    agent_name,
    description_to_json,
    effective_config_to_json,
    health_to_json,
    remote_config_status_to_json,
)
from .errors import APIError
from .models import (
    ActiveConnection,
    AgentDetail,
    AgentList,
    AgentSummary,
    ConnectionHistory,
    ConnectionHistoryPage,
    StatusCounts,
    StatusSummary,
    TransportCounts,
)
from .openapi import DocumentedRoute, Operation
from .params import (
    AGENT_ID_PARAM,
    CURSOR_PARAM,
    LABEL_PARAM,
    OFFSET_PARAM,
    Q_PARAM,
    STATUS_PARAM,
    Page,
    decode_agent_cursor,
    decode_history_cursor,
    encode_agent_cursor,
    encode_history_cursor,
    limit_param,
    parse_agent_id,
    parse_labels,
    parse_page,
    parse_q,
    parse_status,
)
from .responses import JSONResponse, encode_json

logger = logging.getLogger(__name__)

MAX_AGE_S = 5.0
COST_FACTOR = 100.0
INLINE_COST_S = 0.005

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


# ------------------------------------------------------------------------------ cached counts


class StatusCountCache:
    """``(online, offline)`` rows of ``agents``, recounted at most every adaptive window."""

    def __init__(
        self,
        db_run: Callable[[Callable[[queries.Conn], tuple[int, int]]], Awaitable[tuple[int, int]]],
        *,
        max_age_s: float = MAX_AGE_S,
        cost_factor: float = COST_FACTOR,
        inline_cost_s: float = INLINE_COST_S,
    ) -> None:
        self._run = db_run
        self.max_age_s = max_age_s
        self.cost_factor = cost_factor
        self.inline_cost_s = inline_cost_s
        self.task_group: TaskGroup | None = None  # set while the app's lifespan runs
        self._value: tuple[int, int] | None = None
        self._at = float("-inf")  # monotonic time of the count
        self._wall_at: float | None = None
        self._cost = 0.0
        self._refreshing: anyio.Event | None = None

    @property
    def max_age(self) -> float:
        return min(self.max_age_s, self.cost_factor * self._cost)

    async def get(self) -> tuple[int, int, datetime | None]:
        """``(online, offline, counted_at)``; stale by at most ``max_age`` (+ one refresh)."""
        value = self._value
        if value is not None and time.monotonic() - self._at <= self.max_age:
            return (*value, _wall(self._wall_at))
        if self._refreshing is not None:  # another request is counting already
            if value is None:
                await self._refreshing.wait()
                if self._value is None:
                    raise APIError(503, "database_unavailable", "cannot count agents")
            return (*(self._value or value), _wall(self._wall_at))  # type: ignore[misc]
        if value is not None and self.task_group is not None and self._cost > self.inline_cost_s:
            self._refreshing = anyio.Event()
            self.task_group.start_soon(self._refresh_quietly)
            return (*value, _wall(self._wall_at))
        await self._refresh(keep_stale=value is not None)
        assert self._value is not None
        return (*self._value, _wall(self._wall_at))

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh(keep_stale=True)
        except Exception:  # pragma: no cover - keep_stale swallows database errors
            logger.exception("background agent count failed")

    async def _refresh(self, *, keep_stale: bool) -> None:
        if self._refreshing is None:
            self._refreshing = anyio.Event()
        started = time.monotonic()
        try:
            self._value = await self._run(queries.status_counts)
            now = time.monotonic()
            self._cost = now - started
            self._at = now
            self._wall_at = time.time()
        except Exception as exc:
            if not keep_stale:
                raise
            logger.warning("agent count failed, serving the previous one: %s", exc)
            # Back off for a full window, and retry in the background, not in a request.
            self._at = time.monotonic()
            self._cost = max(self._cost, self.max_age_s / self.cost_factor, self.inline_cost_s * 2)
        finally:
            event, self._refreshing = self._refreshing, None
            event.set()


class OnlineIndex:
    """The registry's online agents sorted by uid, re-sorted only after a status transition."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._generation = -1
        self._uids: list[bytes] = []
        self._records: list[AgentRecord] = []

    def snapshot(self) -> tuple[list[bytes], list[AgentRecord]]:
        stats = self._registry.statistics()
        generation = sum(stats.status_changes.values())
        if generation != self._generation:
            records = sorted(self._registry.online_records(), key=lambda r: r.uid)
            self._records = records
            self._uids = [r.uid for r in records]
            self._generation = generation
        return self._uids, self._records


# ------------------------------------------------------------------------------ conversions


def summary_from_record(record: AgentRecord) -> AgentSummary:
    description = record.state.description
    return AgentSummary(
        id=format_instance_uid(record.uid),
        name=agent_name(description) if description is not None else None,
        status="online" if record.online else "offline",
        transport=record.transport.value if record.transport is not None else None,  # type: ignore[arg-type]
        last_seen_at=_wall(record.last_seen),
        last_connected_at=_wall(record.connected_at),
        last_disconnected_at=_wall(record.disconnected_at),
        disconnect_reason=record.disconnect_reason,
    )


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


def detail(
    record: AgentRecord | None, row: queries.AgentDetailRow | None, instance_id: str
) -> AgentDetail:
    """Merge the live record (preferred) and the stored row; at least one is given."""
    if record is None:
        assert row is not None
        return AgentDetail(
            id=row.uid_text,
            name=row.agent_name,
            status=row.status,  # type: ignore[arg-type]
            source="database",
            transport=row.transport,  # type: ignore[arg-type]
            remote_addr=None,
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
        )
    state = record.state
    capabilities = state.capabilities or (row.capabilities if row is not None else 0)
    online = record.online
    return AgentDetail(
        id=format_instance_uid(record.uid),
        name=(
            agent_name(state.description)
            if state.description is not None
            else (row.agent_name if row else None)
        ),
        status="online" if online else "offline",
        source="live",
        transport=record.transport.value if record.transport else None,  # type: ignore[arg-type]
        remote_addr=record.remote_addr if online else None,
        serving_instance=instance_id if online else None,
        capabilities=capability_names(capabilities),
        capabilities_bits=capabilities & _U64,
        description=(
            description_to_json(state.description)
            if state.description is not None
            else (row.description if row else None)
        ),
        health=(
            health_to_json(state.health)
            if state.health is not None
            else (row.health if row else None)
        ),
        effective_config=(
            effective_config_to_json(state.effective_config)
            if state.effective_config is not None
            else (row.effective_config if row else None)
        ),
        remote_config_status=(
            remote_config_status_to_json(state.remote_config_status)
            if state.remote_config_status is not None
            else (row.remote_config_status if row else None)
        ),
        labels=row.labels if row else {},
        last_seen_at=_wall(record.last_seen) or (_utc(row.last_seen_at) if row else None),
        last_connected_at=(
            _wall(record.connected_at) or (_utc(row.last_connected_at) if row else None)
        ),
        last_disconnected_at=(
            _wall(record.disconnected_at) or (_utc(row.last_disconnected_at) if row else None)
        ),
        disconnect_reason=(
            record.disconnect_reason
            if record.disconnected_at is not None
            else (row.disconnect_reason if row else None)
        ),
        created_at=_utc(row.created_at) if row else None,
        updated_at=_utc(row.updated_at) if row else None,
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


# ---------------------------------------------------------------------------------- routes


def routes(services: Services, counts: StatusCountCache | None = None) -> list[DocumentedRoute]:
    """The ``/api/agents`` routes. ``counts`` is shared with the app's lifespan (background
    refresh); a private one is made when not given."""
    registry = services.registry
    db = services.db
    settings = services.settings
    max_page = settings.api_max_page_size
    counts = counts or StatusCountCache(db.run)
    online_index = OnlineIndex(registry)
    page_params = (limit_param(max_page), OFFSET_PARAM, CURSOR_PARAM)

    def agent_id(request: Request) -> bytes:
        return parse_agent_id(request.path_params["id"])

    def not_found(uid: bytes) -> APIError:
        return APIError(404, "agent_not_found", f"no agent {format_instance_uid(uid)}")

    async def summary(request: Request) -> Response:
        stats = registry.statistics()
        db_online, db_offline, as_of = await counts.get()
        total = max(db_online + db_offline, stats.known)
        online = stats.online
        offline = total - online
        return JSONResponse(
            StatusSummary(
                total=total,
                online=online,
                offline=offline,
                status_counts=StatusCounts(online=online, offline=offline),
                online_by_transport=TransportCounts(ws=stats.online_ws, http=stats.online_http),
                counts_as_of=as_of,
            )
        )

    async def online(request: Request) -> Response:
        page = parse_page(request.query_params, max_page)
        start = page.offset
        uids, records = online_index.snapshot()
        if page.cursor is not None:
            after = parse_instance_uid_text(decode_agent_cursor(page.cursor)[0])
            start = bisect.bisect_right(uids, after)
        chosen = records[start : start + page.limit]
        more = start + page.limit < len(records)
        return JSONResponse(
            AgentList(
                agents=[summary_from_record(r) for r in chosen],
                total=len(records),
                limit=page.limit,
                offset=page.offset,
                next_cursor=encode_agent_cursor(format_instance_uid(chosen[-1].uid), len(records))
                if more and chosen
                else None,
            )
        )

    async def list_page(request: Request, flt: queries.AgentFilter) -> Response:
        page = parse_page(request.query_params, max_page)
        after: str | None = None
        total: int | None = None
        if page.cursor is not None:
            after, total = decode_agent_cursor(page.cursor)
        elif flt.only_status:
            db_online, db_offline, _ = await counts.get()
            total = {"online": db_online, "offline": db_offline}.get(
                flt.status or "", db_online + db_offline
            )

        def fetch(conn: queries.Conn) -> tuple[list[queries.AgentRow], int | None]:
            return queries.list_agents(
                conn, flt, limit=page.limit, offset=page.offset, after=after, count=total is None
            )

        rows, counted = await db.run(fetch)
        return JSONResponse(_agent_page(rows, total if total is not None else counted or 0, page))

    async def offline(request: Request) -> Response:
        return await list_page(request, queries.AgentFilter(status="offline"))

    async def agents(request: Request) -> Response:
        params = request.query_params
        flt = queries.AgentFilter(
            status=parse_status(params),
            labels=tuple(parse_labels(params)),
            name_prefix=parse_q(params),
        )
        return await list_page(request, flt)

    async def agent(request: Request) -> Response:
        uid = agent_id(request)
        row = await db.run(lambda conn: queries.agent_detail(conn, uid))
        record = registry.get(uid)
        if record is None and row is None:
            raise not_found(uid)
        # Converting and encoding a large agent state (up to the policy's bounds, a few MiB)
        # takes milliseconds: do it in a worker thread, never on the event loop. The live
        # state's messages are replaced, never mutated, so reading them there is safe.
        body = await anyio.to_thread.run_sync(
            lambda: encode_json(detail(record, row, settings.instance_id))
        )
        return Response(body, media_type="application/json")

    async def active_connection(request: Request) -> Response:
        uid = agent_id(request)
        record = registry.get(uid)
        if record is not None and record.online and record.transport is not None:
            return JSONResponse(
                ActiveConnection(
                    agent_id=format_instance_uid(uid),
                    connected_at=datetime.fromtimestamp(record.connected_at, UTC),
                    transport=record.transport.value,  # type: ignore[arg-type]
                    remote_addr=record.remote_addr,
                    last_seen_at=datetime.fromtimestamp(record.last_seen, UTC),
                    duration_seconds=max(0.0, time.time() - record.connected_at),
                    serving_instance=settings.instance_id,
                )
            )
        if record is None and not await db.run(lambda conn: queries.agent_exists(conn, uid)):
            raise not_found(uid)
        message = f"agent {format_instance_uid(uid)} is not connected to this server"
        raise APIError(404, "not_connected", message)

    async def history(request: Request) -> Response:
        uid = agent_id(request)
        page = parse_page(request.query_params, max_page)
        after: tuple[datetime, int] | None = None
        carried: int | None = None
        if page.cursor is not None:
            at, row_id, carried = decode_history_cursor(page.cursor)
            after = (at, row_id)

        def fetch(conn: queries.Conn) -> queries.HistoryPage:
            return queries.history_page(
                conn, uid, limit=page.limit, offset=page.offset, after=after, count=after is None
            )

        result = await db.run(fetch)
        if not result.agent_known and registry.get(uid) is None:
            raise not_found(uid)
        total = result.total if result.total is not None else carried or 0
        rows = result.rows
        next_cursor = None
        if len(rows) > page.limit:
            rows = rows[: page.limit]
            next_cursor = encode_history_cursor(rows[-1].connected_at, rows[-1].id, total)
        text_id = format_instance_uid(uid)
        return JSONResponse(
            ConnectionHistoryPage(
                histories=[_history_item(text_id, r) for r in rows],
                total=total,
                limit=page.limit,
                offset=page.offset,
                next_cursor=next_cursor,
            )
        )

    id_errors = (400, 404, 503)
    return [
        DocumentedRoute(
            "/api/agents/status/summary",
            summary,
            Operation(
                "Fleet status counts",
                "O(1): `online` is live from this server's registry; `total` and `offline` also "
                "count agents known only to Postgres, from a count reused for at most "
                f"{MAX_AGE_S:g} s (`counts_as_of`).",
                response=StatusSummary,
                errors=(503,),
            ),
            name="agent_status_summary",
        ),
        DocumentedRoute(
            "/api/agents/online",
            online,
            Operation(
                "Agents online on this server",
                "Live from the registry, sorted by agent id.",
                params=page_params,
                response=AgentList,
                errors=(400,),
            ),
            name="online_agents",
        ),
        DocumentedRoute(
            "/api/agents/offline",
            offline,
            Operation(
                "Offline agents",
                "From Postgres (up to one writer flush behind), sorted by agent id; `total` is "
                "the cached offline count.",
                params=page_params,
                response=AgentList,
                errors=(400, 503),
            ),
            name="offline_agents",
        ),
        DocumentedRoute(
            "/api/agents",
            agents,
            Operation(
                "List agents",
                "All agents stored in Postgres, sorted by id, filtered by status, labels "
                "and name prefix.",
                params=(STATUS_PARAM, LABEL_PARAM, Q_PARAM, *page_params),
                response=AgentList,
                errors=(400, 503),
            ),
            name="list_agents",
        ),
        DocumentedRoute(
            "/api/agents/{id}",
            agent,
            Operation(
                "Agent detail",
                "Live values when this server holds the agent, else the stored row.",
                params=(AGENT_ID_PARAM,),
                response=AgentDetail,
                errors=id_errors,
            ),
            name="get_agent",
        ),
        DocumentedRoute(
            "/api/agents/{id}/active-connection",
            active_connection,
            Operation(
                "The agent's live connection",
                "404 `not_connected` when the agent is not connected to this server.",
                params=(AGENT_ID_PARAM,),
                response=ActiveConnection,
                errors=id_errors,
            ),
            name="agent_active_connection",
        ),
        DocumentedRoute(
            "/api/agents/{id}/connection-history",
            history,
            Operation(
                "The agent's connection history",
                "Newest first (connected_at, id descending). Page with limit/offset, or follow "
                "`next_cursor` (keyset, constant cost per page).",
                params=(AGENT_ID_PARAM, *page_params),
                response=ConnectionHistoryPage,
                errors=id_errors,
            ),
            name="agent_connection_history",
        ),
    ]
