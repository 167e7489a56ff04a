"""Read-side SQL for the REST API: plain functions of a psycopg connection, run in a thread.

Why a separate module: the batch writer owns every write; this module owns every read the API
does, so each query sits next to the index it relies on (see ``0002_agents.sql`` and
``0003_api_indexes.sql``) and can be checked with EXPLAIN in one place (``docs/api.md``).

Every list is keyset-paginated on an indexed order, so a page costs O(limit) index entries
whatever the table size:

* connection history: ``(instance_uid, connected_at DESC, id DESC)``, a row-value comparison
  ``(connected_at, id) < (cursor)`` resumes the scan;
* agent lists: ``uid_text`` (``agents_status_uid_idx`` for a status, the unique index otherwise).

``OFFSET`` is accepted too (it costs O(offset)); counts are done per agent (index-only scan of
one agent's entries) or taken from the cached status counts of the API layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: int
    connected_at: datetime
    disconnected_at: datetime | None
    duration_s: float | None
    disconnect_reason: str | None
    remote_addr: str | None
    transport: str
    serving_instance: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    agent_known: bool
    total: int | None  # None when not counted
    rows: list[HistoryRow]  # up to limit + 1 rows: the extra one says a next page exists


_HISTORY_COLUMNS = """id, connected_at, disconnected_at, duration_s, disconnect_reason,
    remote_addr, transport, serving_instance"""

_HISTORY_COUNT = """
SELECT (SELECT count(*) FROM agent_connection_history WHERE instance_uid = %(uid)s),
       EXISTS (SELECT 1 FROM agents WHERE instance_uid = %(uid)s)
"""

_AGENT_EXISTS = "SELECT 0, EXISTS (SELECT 1 FROM agents WHERE instance_uid = %(uid)s)"

_HISTORY_PAGE = f"""
SELECT {_HISTORY_COLUMNS} FROM agent_connection_history
WHERE instance_uid = %(uid)s
ORDER BY connected_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""

_HISTORY_AFTER = f"""
SELECT {_HISTORY_COLUMNS} FROM agent_connection_history
WHERE instance_uid = %(uid)s AND (connected_at, id) < (%(at)s, %(id)s)
ORDER BY connected_at DESC, id DESC
LIMIT %(limit)s
"""


def history_page(
    conn: Conn,
    uid: bytes,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, int] | None = None,
    count: bool = True,
) -> HistoryPage:
    """One page (plus one look-ahead row) of an agent's connections, newest first; the number
    of the agent's connections when ``count`` (an index-only scan of its entries)."""
    with conn.cursor() as cur:
        cur.execute(_HISTORY_COUNT if count else _AGENT_EXISTS, {"uid": uid})
        total, known = cur.fetchone() or (0, False)
        params: dict[str, Any] = {"uid": uid, "limit": limit + 1}
        if after is None:
            params["offset"] = offset
            cur.execute(_HISTORY_PAGE, params)
        else:
            params["at"], params["id"] = after
            cur.execute(_HISTORY_AFTER, params)
        rows = [HistoryRow(*r) for r in cur.fetchall()]
    return HistoryPage(bool(known) or total > 0, int(total) if count else None, rows)


# ---------------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentRow:
    uid_text: str
    agent_name: str | None
    status: str
    transport: str | None
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    drifted_at: datetime | None = None


_AGENT_COLUMNS = """uid_text, agent_name, status, transport, last_seen_at, last_connected_at,
    last_disconnected_at, disconnect_reason, drifted_at"""


@dataclass(frozen=True, slots=True)
class AgentFilter:
    status: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    name_prefix: str | None = None
    drifted: bool | None = None  # agents_drifted_idx
    # Only agents online, or offline for at most this many seconds (agents_offline_since_idx).
    max_offline_s: int | None = None

    @property
    def only_status(self) -> bool:
        """True when the count can come from the per-status counts (no other filter)."""
        return (
            not self.labels
            and self.name_prefix is None
            and self.drifted is None
            and self.max_offline_s is None
        )

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.status is not None:
            clauses.append("status = %(status)s")
            params["status"] = self.status
        for i, (key, value) in enumerate(self.labels):
            # agents_labels_idx (GIN, jsonb_path_ops) serves @>.
            clauses.append(f"labels @> %(label{i})s")
            params[f"label{i}"] = Jsonb({key: value})
        if self.name_prefix is not None:
            # agents_name_idx (lower(agent_name) text_pattern_ops) serves a constant prefix
            # LIKE; the statement is never server-prepared, so the planner sees the value.
            clauses.append(r"lower(agent_name) LIKE lower(%(prefix)s) || '%%'")
            params["prefix"] = _escape_like(self.name_prefix)
        if self.drifted is not None:
            clauses.append(f"drifted_at IS {'NOT ' if self.drifted else ''}NULL")
        if self.max_offline_s is not None:
            clauses.append(
                "(status = 'online' OR (status = 'offline' AND last_disconnected_at >= "
                "now() - make_interval(secs => %(max_offline)s)))"
            )
            params["max_offline"] = self.max_offline_s
        return " AND ".join(clauses), params


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_agents(
    conn: Conn,
    flt: AgentFilter,
    *,
    limit: int,
    offset: int = 0,
    after: str | None = None,
    count: bool = True,
) -> tuple[list[AgentRow], int | None]:
    """A page (plus one look-ahead row) of agents ordered by ``uid_text``, and the number of
    agents matching ``flt`` when ``count``."""
    where, params = flt.where()
    conditions = [where] if where else []
    if after is not None:
        conditions.append("uid_text > %(after)s")
        params["after"] = after
    sql = f"SELECT {_AGENT_COLUMNS} FROM agents"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY uid_text LIMIT %(limit)s"
    params["limit"] = limit + 1
    if after is None and offset:
        sql += " OFFSET %(offset)s"
        params["offset"] = offset
    prepare = False if flt.name_prefix is not None else None
    total: int | None = None
    with conn.cursor() as cur:
        cur.execute(sql, params, prepare=prepare)
        rows = [AgentRow(*r) for r in cur.fetchall()]
        if count:
            count_sql = "SELECT count(*) FROM agents" + (f" WHERE {where}" if where else "")
            paging = ("after", "limit", "offset")
            count_params = {k: v for k, v in params.items() if k not in paging}
            cur.execute(count_sql, count_params, prepare=prepare)
            row = cur.fetchone()
            total = int(row[0]) if row else 0
    return rows, total


@dataclass(frozen=True, slots=True)
class FleetCounts:
    total: int
    online_ws: int
    online_http: int
    instances: int  # instances whose counts are included (running, not declared lost)
    as_of: datetime

    @property
    def online(self) -> int:
        return self.online_ws + self.online_http

    @property
    def offline(self) -> int:
        return max(0, self.total - self.online)


# O(instances), whatever the fleet size: every writer keeps fleet_stats.agents_total and
# publishes its instance's online counts in the transaction that changed them (migration 0005).
_FLEET_COUNTS = """
SELECT f.agents_total,
    COALESCE(sum(i.online_ws) FILTER (WHERE i.stopped_at IS NULL AND i.lost_at IS NULL), 0),
    COALESCE(sum(i.online_http) FILTER (WHERE i.stopped_at IS NULL AND i.lost_at IS NULL), 0),
    count(i.instance_id) FILTER (WHERE i.stopped_at IS NULL AND i.lost_at IS NULL),
    now()
FROM fleet_stats AS f LEFT JOIN server_instances AS i ON true
GROUP BY f.agents_total
"""


def fleet_counts(conn: Conn) -> FleetCounts:
    """The fleet summary, the same from every instance (as of the last committed flushes)."""
    row = conn.execute(_FLEET_COUNTS).fetchone()
    assert row is not None, "fleet_stats has its row (migration 0005)"
    return FleetCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4])


@dataclass(frozen=True, slots=True)
class ActiveRow:
    serving_instance: str
    transport: str
    connected_at: datetime
    remote_addr: str | None
    last_seen_at: datetime | None


# The agent's row says who holds it; its open history row (agent_connection_history_agent_idx:
# the newest of this agent's entries) says since when and from where.
_ACTIVE = """
SELECT a.serving_instance, h.transport, h.connected_at, h.remote_addr, a.last_seen_at
FROM agents AS a
JOIN LATERAL (
    SELECT transport, connected_at, remote_addr FROM agent_connection_history
    WHERE instance_uid = a.instance_uid AND serving_instance = a.serving_instance
      AND disconnected_at IS NULL
    ORDER BY connected_at DESC, id DESC LIMIT 1
) AS h ON true
WHERE a.instance_uid = %s AND a.status = 'online'
"""


def active_connection(conn: Conn, uid: bytes) -> ActiveRow | None:
    row = conn.execute(_ACTIVE, (uid,)).fetchone()
    return ActiveRow(*row) if row else None


@dataclass(frozen=True, slots=True)
class AgentDetailRow:
    uid_text: str
    status: str
    serving_instance: str | None
    transport: str | None
    agent_name: str | None
    last_seen_at: datetime | None
    last_connected_at: datetime | None
    last_disconnected_at: datetime | None
    disconnect_reason: str | None
    capabilities: int
    description: dict[str, Any] | None
    health: dict[str, Any] | None
    effective_config: dict[str, Any] | None
    remote_config_status: dict[str, Any] | None
    labels: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    remote_addr: str | None  # of the open connection, when online
    drifted_at: datetime | None = None
    applied_config_hash: str | None = None


_AGENT_DETAIL = """
SELECT a.uid_text, a.status, a.serving_instance, a.transport, a.agent_name, a.last_seen_at,
    a.last_connected_at, a.last_disconnected_at, a.disconnect_reason, a.capabilities,
    a.description, a.health, a.effective_config, a.remote_config_status, a.labels,
    a.created_at, a.updated_at, h.remote_addr, a.drifted_at, a.applied_config_hash
FROM agents AS a
LEFT JOIN LATERAL (
    SELECT remote_addr FROM agent_connection_history
    WHERE instance_uid = a.instance_uid AND a.status = 'online' AND disconnected_at IS NULL
      AND serving_instance = a.serving_instance
    ORDER BY connected_at DESC, id DESC LIMIT 1
) AS h ON true
WHERE a.instance_uid = %s
"""


def agent_detail(conn: Conn, uid: bytes) -> AgentDetailRow | None:
    row = conn.execute(_AGENT_DETAIL, (uid,)).fetchone()
    return AgentDetailRow(*row) if row else None


def agent_exists(conn: Conn, uid: bytes) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM agents WHERE instance_uid = %s)", (uid,))
    found = row.fetchone()
    return bool(found and found[0])
