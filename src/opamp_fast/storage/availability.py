"""Availability computed from connection history: per agent and fleet-wide, for any window.

The rules (``docs/api.md``, "Availability"), the same for both answers:

* Only time inside the window counts. A session counts from ``max(connected_at, since)`` to
  ``min(disconnected_at, until)``; an open session counts up to ``until`` (never beyond now).
* An agent is observed from its first connection: ``max(since, first_seen)``, where
  ``first_seen`` is the earlier of its row's ``created_at`` and its first session in the window;
  ``uptime_ratio`` is online time over observed time (``null`` when nothing was observed).
* A disconnect is a session that ended inside the window, counted under its reason.

Queries: one agent's sessions come from ``agent_connection_history_agent_idx`` (those that
began in the window, and the two latest that began before it: sessions of one agent follow each
other, so only those can reach into it). The fleet's answer is one statement that aggregates
per agent and returns the answer's few figures as JSON; its sessions come from raw history
(``agent_connection_history_closed_idx`` and ``_open_idx``) for a window shorter than a whole
UTC day, else from the daily rollup ``agent_uptime_daily`` (kept by triggers, migration 0013)
for the whole days plus raw rows for the partial days (:func:`whole_days`,
``docs/persistence.md``, "Availability rollup"). ``docs/performance.md`` has the figures.

:class:`AvailabilityMonitor` computes the fleet's last hour (and the drifted agents) on a timer,
for the metrics: a scrape reads two numbers, never the database; one instance of the fleet
computes them per interval, the others read what it stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from .config_queries import selector_sql
from .retention import try_lock

if TYPE_CHECKING:
    from .database import Database

__all__ = [
    "FLAPPING_DISCONNECTS",
    "AgentAvailability",
    "AvailabilityMonitor",
    "FleetAvailability",
    "FleetFilter",
    "Window",
    "agent_availability",
    "fleet_availability",
    "summarize",
]

logger = logging.getLogger(__name__)

#: Disconnects in a window from which an agent is flapping (the API's default, the metric's).
FLAPPING_DISCONNECTS: Final = 5
#: Online stretches an agent's answer lists (the newest), for the console's strip.
TIMELINE_MAX: Final = 500
#: Versions a fleet answer lists (the most common).
VERSIONS_MAX: Final = 50
#: An agent's ``service.version``, as the console's overview reads it.
VERSION_SQL: Final = (
    "COALESCE(a.description -> 'identifying_attributes' ->> 'service.version', "
    "a.description -> 'non_identifying_attributes' ->> 'service.version')"
)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime

    @classmethod
    def last(cls, seconds: float, *, now: datetime | None = None) -> Window:
        until = now or datetime.now(UTC)
        return cls(until - timedelta(seconds=seconds), until)


# ------------------------------------------------------------------------------ one agent


@dataclass(frozen=True, slots=True)
class Stretch:
    """An online stretch inside the window; ``reason``: why it ended (None: it went on past
    the window's end, or is still open)."""

    start: datetime
    end: datetime
    reason: str | None


@dataclass(frozen=True, slots=True)
class AgentAvailability:
    window: Window
    first_seen: datetime | None
    observed_seconds: float
    online_seconds: float
    sessions: int
    disconnects: int
    disconnects_by_reason: dict[str, int]
    longest_offline_seconds: float
    timeline: list[Stretch]
    timeline_truncated: bool = False

    @property
    def uptime_ratio(self) -> float | None:
        if self.observed_seconds <= 0:
            return None
        return min(1.0, self.online_seconds / self.observed_seconds)

    @property
    def mean_session_seconds(self) -> float | None:
        return self.online_seconds / self.sessions if self.sessions else None


Session = tuple[datetime, datetime | None, str | None]  # connected_at, disconnected_at, reason

_AGENT_SESSIONS = """
SELECT connected_at, disconnected_at, disconnect_reason FROM (
    (SELECT id, connected_at, disconnected_at, disconnect_reason FROM agent_connection_history
     WHERE instance_uid = %(uid)s AND connected_at >= %(since)s AND connected_at < %(until)s)
    UNION ALL
    (SELECT id, connected_at, disconnected_at, disconnect_reason FROM agent_connection_history
     WHERE instance_uid = %(uid)s AND connected_at < %(since)s
     ORDER BY connected_at DESC, id DESC LIMIT 2)
) AS s
WHERE disconnected_at IS NULL OR disconnected_at > %(since)s
ORDER BY connected_at, id
"""


# What :func:`summarize` computes, in the database: an agent with tens of thousands of
# sessions in the window sends back a few figures and the newest stretches, not every row.
# Stretches that overlap or touch are merged into islands (n: a running count of the starts
# past every earlier end); an island's reason is that of its latest-ending stretch.
_AGENT_FIGURES = f"""
WITH s AS ({_AGENT_SESSIONS}), b AS (
    SELECT LEAST(%(created)s, min(connected_at)) AS first_seen, count(*) AS sessions,
        LEAST(%(until)s, GREATEST(%(since)s, LEAST(%(created)s, min(connected_at)))) AS begin
    FROM s
), c AS (
    SELECT GREATEST(s.connected_at, b.begin) AS a,
        LEAST(COALESCE(s.disconnected_at, %(until)s), %(until)s) AS e,
        CASE WHEN s.disconnected_at > %(since)s AND s.disconnected_at <= %(until)s
            THEN COALESCE(s.disconnect_reason, 'unknown') END AS reason
    FROM s, b
), k AS (
    SELECT a, e, reason, max(e) OVER (ORDER BY a, e ROWS BETWEEN UNBOUNDED PRECEDING
        AND 1 PRECEDING) AS before
    FROM c WHERE e > a
), i AS (
    SELECT a, e, reason, count(*) FILTER (WHERE before IS NULL OR a > before)
        OVER (ORDER BY a, e ROWS UNBOUNDED PRECEDING) AS n
    FROM k
), m AS (
    SELECT min(a) AS a, max(e) AS e, (array_agg(reason ORDER BY e DESC, a))[1] AS reason
    FROM i GROUP BY n
)
SELECT b.first_seen, b.begin, b.sessions,
    (SELECT COALESCE(json_object_agg(reason, n), '{{}}') FROM (
        SELECT reason, count(*) AS n FROM c WHERE reason IS NOT NULL GROUP BY reason) AS r),
    (SELECT COALESCE(sum(date_part('epoch', e - a)), 0) FROM m),
    (SELECT max(g) FROM (
        SELECT date_part('epoch', a - lag(e, 1, b.begin) OVER (ORDER BY a)) AS g FROM m
        UNION ALL
        SELECT date_part('epoch', %(until)s - COALESCE((SELECT max(e) FROM m), b.begin))) AS x),
    (SELECT count(*) FROM m),
    (SELECT COALESCE(json_agg(json_build_array(date_part('epoch', a), date_part('epoch', e),
        reason) ORDER BY a), '[]') FROM (
        SELECT * FROM m ORDER BY a DESC LIMIT {TIMELINE_MAX}) AS t)
FROM b
"""


def agent_availability(conn: Conn, uid: bytes, window: Window) -> AgentAvailability | None:
    """The agent's availability in ``window`` (as :func:`summarize` defines it, computed by
    the database); None when there is no such agent."""
    row = conn.execute("SELECT created_at FROM agents WHERE instance_uid = %s", (uid,)).fetchone()
    if row is None:
        return None
    params = {"uid": uid, "since": window.since, "until": window.until, "created": row[0]}
    figures = conn.execute(_AGENT_FIGURES, params).fetchone()
    assert figures is not None
    first_seen, begin, sessions, reasons, online, longest, stretches, timeline = figures
    reasons = _json(reasons)
    utc = UTC
    return AgentAvailability(
        window=window,
        first_seen=first_seen,
        observed_seconds=(window.until - begin).total_seconds(),
        online_seconds=float(online),
        sessions=int(sessions),
        disconnects=sum(reasons.values()),
        disconnects_by_reason=reasons,
        longest_offline_seconds=max(0.0, float(longest or 0.0)),
        timeline=[
            Stretch(datetime.fromtimestamp(a, utc), datetime.fromtimestamp(e, utc), reason)
            for a, e, reason in _json(timeline)
        ],
        timeline_truncated=stretches > TIMELINE_MAX,
    )


def summarize(
    sessions: Sequence[Session], window: Window, created_at: datetime | None
) -> AgentAvailability:
    """Pure: the figures of an agent's sessions that reach into ``window`` (oldest first)."""
    since, until = window.since, window.until
    first_seen = min([t for t in (created_at, *(s[0] for s in sessions)) if t is not None],
                     default=None)  # fmt: skip
    begin = until if first_seen is None else min(until, max(since, first_seen))
    reasons: Counter[str] = Counter()
    clipped: list[Stretch] = []
    for start, end, reason in sessions:
        ended = end is not None and since < end <= until
        if ended:
            reasons[reason or "unknown"] += 1
        a, b = max(start, begin), min(end or until, until)
        if b > a:
            clipped.append(Stretch(a, b, (reason or "unknown") if ended else None))
    merged = _merge(clipped)
    online = sum((s.end - s.start).total_seconds() for s in merged)
    edges = [begin, *(t for s in merged for t in (s.start, s.end)), until]
    gaps = [(edges[i + 1] - edges[i]).total_seconds() for i in range(0, len(edges), 2)]
    return AgentAvailability(
        window=window,
        first_seen=first_seen,
        observed_seconds=(until - begin).total_seconds(),
        online_seconds=online,
        sessions=len(sessions),
        disconnects=sum(reasons.values()),
        disconnects_by_reason=dict(reasons),
        longest_offline_seconds=max(0.0, *gaps),
        timeline=merged[-TIMELINE_MAX:],
        timeline_truncated=len(merged) > TIMELINE_MAX,
    )


def _merge(stretches: list[Stretch]) -> list[Stretch]:
    """Overlapping stretches (a takeover between instances, for up to a flush) as one."""
    merged: list[Stretch] = []
    for s in sorted(stretches, key=lambda s: s.start):
        if merged and s.start <= merged[-1].end:
            last = merged[-1]
            if s.end > last.end:
                merged[-1] = Stretch(last.start, s.end, s.reason)
        else:
            merged.append(s)
    return merged


# ------------------------------------------------------------------------------ the fleet


@dataclass(frozen=True, slots=True)
class FleetFilter:
    labels: tuple[tuple[str, str], ...] = ()
    selector: Mapping[str, str] | None = None  # a group's: its members
    version: str | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for i, (key, value) in enumerate(self.labels):
            clauses.append(f"a.labels @> %(label{i})s")
            params[f"label{i}"] = Jsonb({key: value})
        if self.selector is not None:
            where, selected = selector_sql(self.selector, prefix="grp")
            clauses.append(where)
            params.update(selected)
        if self.version is not None:
            clauses.append(f"{VERSION_SQL} = %(version)s")
            params["version"] = self.version
        return " AND ".join(clauses) or "TRUE", params


@dataclass(frozen=True, slots=True)
class VersionAvailability:
    version: str | None
    agents: int
    uptime_ratio: float | None
    disconnects: int


@dataclass(frozen=True, slots=True)
class FlappingAgent:
    id: str
    name: str | None
    disconnects: int
    uptime_ratio: float | None


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    since: datetime
    until: datetime
    agents: int
    uptime_ratio: float | None


@dataclass(frozen=True, slots=True)
class FleetAvailability:
    window: Window
    agents: int
    uptime_ratio: float | None
    disconnects: int
    disconnects_by_reason: dict[str, int]
    by_version: list[VersionAvailability]
    flapping_total: int
    flapping: list[FlappingAgent]
    series: list[SeriesPoint] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FleetPage:
    """Which flapping agents to list: the worst first (most disconnects, then by id)."""

    min_disconnects: int = FLAPPING_DISCONNECTS
    limit: int = 100  # the statement returns one more, when there is more
    offset: int = 0
    after: tuple[int, str] | None = None  # (disconnects, id) of the last one listed
    buckets: int = 0  # the window cut in this many equal parts, each with its uptime


_FLEET = """
WITH f AS MATERIALIZED (
    SELECT a.instance_uid AS uid, a.uid_text, a.agent_name, {version} AS version, a.created_at
    FROM agents AS a WHERE a.created_at < %(until)s AND {where}
), w AS (
    SELECT h.instance_uid AS uid, h.connected_at, h.disconnected_at, h.disconnect_reason
    FROM agent_connection_history AS h
    WHERE h.disconnected_at > %(since)s AND h.connected_at < %(until)s
    UNION ALL
    SELECT h.instance_uid, h.connected_at, h.disconnected_at, h.disconnect_reason
    FROM agent_connection_history AS h
    WHERE h.disconnected_at IS NULL AND h.connected_at < %(until)s
), parts (uid, reason, online_s, n, first_conn) AS (
{parts}
), g AS MATERIALIZED (
    -- aggregated before the join: a hash of a few rows per agent, not a sort of them all
    SELECT p.* FROM (
        SELECT uid, reason, sum(online_s) AS online_s, sum(n) AS n, min(first_conn) AS first_conn
        FROM parts GROUP BY 1, 2
    ) AS p JOIN f ON f.uid = p.uid
), per AS MATERIALIZED (
    SELECT f.uid, f.uid_text, f.agent_name, f.version, COALESCE(s.online_s, 0) AS online_s,
        COALESCE(s.disconnects, 0) AS disconnects,
        GREATEST(%(since)s, LEAST(f.created_at, s.first_conn)) AS observed_from
    FROM f LEFT JOIN (
        SELECT uid, sum(online_s) AS online_s, min(first_conn) AS first_conn,
            COALESCE(sum(n), 0)::bigint AS disconnects
        FROM g GROUP BY uid) AS s ON s.uid = f.uid
), r AS MATERIALIZED (
    SELECT per.*, LEAST(1.0, online_s
        / NULLIF(date_part('epoch', %(until)s - observed_from), 0)) AS ratio
    FROM per WHERE observed_from < %(until)s
){buckets_cte}
SELECT
    (SELECT count(*) FROM r),
    (SELECT avg(ratio) FROM r),
    (SELECT COALESCE(sum(disconnects), 0)::bigint FROM r),
    (SELECT COALESCE(json_object_agg(reason, n), '{{}}') FROM (
        SELECT reason, sum(n)::bigint AS n FROM g WHERE reason IS NOT NULL GROUP BY reason) AS x),
    (SELECT COALESCE(json_agg(json_build_array(version, agents, ratio, disconnects)), '[]') FROM (
        SELECT version, count(*) AS agents, avg(ratio) AS ratio,
            sum(disconnects)::bigint AS disconnects
        FROM r GROUP BY version ORDER BY count(*) DESC, version NULLS LAST LIMIT {versions}
    ) AS v),
    (SELECT count(*) FROM r WHERE disconnects >= %(min)s),
    (SELECT COALESCE(json_agg(json_build_array(uid_text, agent_name, disconnects, ratio)),
        '[]') FROM (
        SELECT uid_text, agent_name, disconnects, ratio FROM r
        WHERE disconnects >= %(min)s {after}
        ORDER BY disconnects DESC, uid_text LIMIT %(limit)s OFFSET %(offset)s) AS x){series}
"""

# Each session that reaches into the window, clipped to it: (uid, reason of a disconnect inside
# the window or null, online seconds, disconnects, connected_at).
_RAW_PARTS = """
    SELECT w.uid, CASE WHEN w.disconnected_at <= %(until)s
            THEN COALESCE(w.disconnect_reason, 'unknown') END,
        date_part('epoch', LEAST(COALESCE(w.disconnected_at, %(until)s), %(until)s)
            - GREATEST(w.connected_at, %(since)s)),
        (w.disconnected_at <= %(until)s)::int, w.connected_at
    FROM w"""

# The same figures when the window covers whole UTC days [d0, d1): those days from the rollup
# (migration 0013), the rest from raw rows found by bounded index ranges:
# * left: sessions closed in (since, d0] (closed_idx); those running past d0, from the
#   rollup row of the day before d0 (tail_start);
# * right: sessions closed in [d1, d1 + 1 day) (closed_idx); those running past that day,
#   from the rollup row of d1 (tail_start);
# * open sessions (open_idx).
# A disconnect at d0 belongs to day d0, one at d1 to the right part: each counts once.
_ROLLUP_PARTS = """
    SELECT u.instance_uid, NULLIF(u.reason, ''), u.online_s, u.disconnects, u.first_conn
    FROM agent_uptime_daily AS u WHERE u.day >= %(d0)s AND u.day < %(d1)s
    UNION ALL
    SELECT h.instance_uid, CASE WHEN h.disconnected_at < %(d0)s
            THEN COALESCE(h.disconnect_reason, 'unknown') END,
        date_part('epoch', h.disconnected_at - GREATEST(h.connected_at, %(since)s)),
        (h.disconnected_at < %(d0)s)::int, h.connected_at
    FROM agent_connection_history AS h
    WHERE h.disconnected_at > %(since)s AND h.disconnected_at <= %(d0)s
    UNION ALL
    SELECT u.instance_uid, NULL,
        GREATEST(0, date_part('epoch', %(d0)s - GREATEST(u.tail_start, %(since)s))), 0,
        u.tail_start
    FROM agent_uptime_daily AS u
    WHERE u.day = %(d0)s - interval '1 day' AND u.reason = '' AND u.tail_start IS NOT NULL
    UNION ALL
    SELECT h.instance_uid, CASE WHEN h.disconnected_at <= %(until)s
            THEN COALESCE(h.disconnect_reason, 'unknown') END,
        GREATEST(0, date_part('epoch', LEAST(h.disconnected_at, %(until)s)
            - GREATEST(h.connected_at, %(d1)s))),
        (h.disconnected_at <= %(until)s)::int, h.connected_at
    FROM agent_connection_history AS h
    WHERE h.disconnected_at >= %(d1)s AND h.disconnected_at < %(d1)s + interval '1 day'
        AND h.connected_at < %(until)s
    UNION ALL
    SELECT u.instance_uid, NULL, date_part('epoch', %(until)s - u.tail_start), 0, u.tail_start
    FROM agent_uptime_daily AS u
    WHERE u.day = %(d1)s AND u.reason = '' AND u.tail_start < %(until)s
    UNION ALL
    SELECT h.instance_uid, NULL,
        date_part('epoch', %(until)s - GREATEST(h.connected_at, %(since)s)), 0, h.connected_at
    FROM agent_connection_history AS h
    WHERE h.disconnected_at IS NULL AND h.connected_at < %(until)s"""


def whole_days(window: Window) -> tuple[datetime, datetime] | None:
    """The whole UTC days ``[d0, d1)`` inside ``window``; None when there is none. ``d0`` is
    the first midnight *after* ``since``: a disconnect at ``since`` is outside the window, but
    the rollup would count it in the day it begins."""
    since = window.since.astimezone(UTC)
    d0 = since.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    until = window.until.astimezone(UTC)
    d1 = until.replace(hour=0, minute=0, second=0, microsecond=0)
    return (d0, d1) if d1 > d0 else None


_AFTER = (
    "AND (disconnects < %(after_n)s OR (disconnects = %(after_n)s AND uid_text > %(after_id)s))"
)

# The window cut in equal buckets: each bucket's mean uptime over the agents observed in it.
_BUCKETS_CTE = """, b AS (
    SELECT i, %(since)s + i * %(step)s AS b0, %(since)s + (i + 1) * %(step)s AS b1
    FROM generate_series(0, %(buckets)s - 1) AS i
), x AS (
    -- each session against the few buckets it spans (by arithmetic, not by a join on ranges)
    SELECT w.uid, i, sum(GREATEST(0, date_part('epoch',
        LEAST(COALESCE(w.disconnected_at, %(until)s), %(until)s, %(since)s + (i + 1) * %(step)s)
        - GREATEST(w.connected_at, %(since)s + i * %(step)s)))) AS online_s
    FROM w JOIN f ON f.uid = w.uid,
    LATERAL generate_series(
        GREATEST(0, floor(date_part('epoch', w.connected_at - %(since)s) / %(step_s)s))::int,
        LEAST(%(buckets)s - 1, floor(date_part('epoch',
            LEAST(COALESCE(w.disconnected_at, %(until)s), %(until)s) - %(since)s)
            / %(step_s)s))::int) AS i
    GROUP BY 1, 2
)"""
_SERIES = """,
    (SELECT COALESCE(json_agg(json_build_array(i, agents, ratio) ORDER BY i), '[]') FROM (
        SELECT b.i, count(p.uid) AS agents, avg(LEAST(1.0, COALESCE(x.online_s, 0)
            / NULLIF(date_part('epoch', b.b1 - GREATEST(b.b0, p.observed_from)), 0))) AS ratio
        FROM b JOIN per AS p ON p.observed_from < b.b1
        LEFT JOIN x ON x.uid = p.uid AND x.i = b.i
        GROUP BY b.i) AS s)"""


def fleet_sql(
    flt: FleetFilter, page: FleetPage, days: tuple[datetime, datetime] | None = None
) -> tuple[str, dict[str, Any]]:
    """The fleet statement for ``flt`` and ``page`` and its parameters (but the window): over
    the rollup for the whole ``days`` when given, else over raw history."""
    where, params = flt.where()
    if days is not None:
        params["d0"], params["d1"] = days
    params.update(min=page.min_disconnects, limit=page.limit + 1, offset=page.offset)
    after = ""
    if page.after is not None:
        after = _AFTER
        params["after_n"], params["after_id"] = page.after
    sql = _FLEET.format(
        parts=_RAW_PARTS if days is None else _ROLLUP_PARTS,
        version=VERSION_SQL,
        where=where,
        versions=VERSIONS_MAX,
        after=after,
        buckets_cte=_BUCKETS_CTE if page.buckets else "",
        series=_SERIES if page.buckets else "",
    )
    return sql, params


def fleet_availability(
    conn: Conn, window: Window, flt: FleetFilter, page: FleetPage
) -> FleetAvailability:
    """The fleet's (or the filtered agents') availability in ``window``: one statement."""
    sql, params = fleet_sql(flt, page, whole_days(window))
    conn.execute("SET LOCAL work_mem = '32MB'")  # its aggregates hash in memory, not on disk
    params.update(since=window.since, until=window.until)
    step = (window.until - window.since) / max(1, page.buckets)
    if page.buckets:
        params.update(step=step, step_s=step.total_seconds(), buckets=page.buckets)
    row = conn.execute(sql, params, prepare=False).fetchone()
    assert row is not None
    agents, ratio, disconnects, reasons, versions, flapping_total, flapping = row[:7]
    edges = [window.since + i * step for i in range(page.buckets)] + [window.until]
    series = [
        SeriesPoint(edges[i], edges[i + 1], n, r)
        for i, n, r in (_json(row[7]) if page.buckets else [])
    ]
    return FleetAvailability(
        window=window,
        agents=int(agents),
        uptime_ratio=None if ratio is None else float(ratio),
        disconnects=int(disconnects),
        disconnects_by_reason={k: int(v) for k, v in _json(reasons).items()},
        by_version=[VersionAvailability(*v) for v in _json(versions)],
        flapping_total=int(flapping_total),
        flapping=[FlappingAgent(*a) for a in _json(flapping)],
        series=series,
    )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def drifted_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM agents WHERE drifted_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


# ------------------------------------------------------------------------------ the metrics


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """The fleet's last hour, for the metrics (as of ``at``)."""

    at: float
    uptime_ratio: float | None
    flapping: int
    drifted: int


#: Held by the instance computing the fleet's figures for the others (transaction-scoped).
FIGURES_LOCK_KEY: Final = 0x6F70616D70666967

_STORED_FIGURES = """
SELECT date_part('epoch', computed_at), uptime_ratio, flapping, drifted,
    computed_at > to_timestamp(%(fresh_after)s) AND window_s = %(window)s
        AND min_disconnects = %(min)s
FROM fleet_figures
"""

_STORE_FIGURES = """
INSERT INTO fleet_figures (computed_at, window_s, min_disconnects, uptime_ratio, flapping, drifted)
VALUES (to_timestamp(%(at)s), %(window)s, %(min)s, %(ratio)s, %(flapping)s, %(drifted)s)
ON CONFLICT (id) DO UPDATE SET computed_at = EXCLUDED.computed_at,
    window_s = EXCLUDED.window_s, min_disconnects = EXCLUDED.min_disconnects,
    uptime_ratio = EXCLUDED.uptime_ratio, flapping = EXCLUDED.flapping,
    drifted = EXCLUDED.drifted
"""


class AvailabilityMonitor:
    """Every ``interval_s``, the fleet's uptime and flapping agents over the last ``window_s``
    and the drifted agents, from Postgres: what ``/metrics`` exports, so that a scrape never
    queries the database.

    The figures are the fleet's, the same for every instance: one instance computes them per
    interval (under an advisory lock) and stores them in ``fleet_figures``; the others read
    that row. Each computing them (each worker of ``--workers`` too) cost a fleet-wide
    statement per instance per interval, all at about the same moment (migration 0015)."""

    def __init__(
        self,
        db: Database,
        *,
        interval_s: float = 60.0,
        window_s: float = 3600.0,
        min_disconnects: int = FLAPPING_DISCONNECTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.interval_s = interval_s
        self.window_s = window_s
        self.min_disconnects = min_disconnects
        self._clock = clock
        self.figures: FleetFigures | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.refresh()
            await anyio.sleep(self.interval_s)

    async def refresh(self) -> FleetFigures | None:
        """The fleet's figures of the last interval: another instance's, or computed here when
        none are that fresh and nobody else is computing them (an outage keeps the last ones)."""
        return await self._update(self._shared)

    async def sample(self) -> FleetFigures | None:
        """Compute the figures now, and store them for the other instances."""
        return await self._update(self._compute)

    async def _update(self, read: Callable[[Conn], FleetFigures | None]) -> FleetFigures | None:
        try:
            self.figures = await self._db.run(read) or self.figures
        except (psycopg.Error, PoolTimeout) as exc:
            logger.debug("availability figures not refreshed: %s", exc)
        return self.figures

    def _shared(self, conn: Conn) -> FleetFigures | None:
        params = {
            "fresh_after": self._clock() - self.interval_s,
            "window": self.window_s,
            "min": self.min_disconnects,
        }
        # The lock first, then the row: one who computed and released it is visible by then,
        # so figures are never computed twice for the same interval.
        computing_here = try_lock(conn, FIGURES_LOCK_KEY)  # held: another instance computes
        row = conn.execute(_STORED_FIGURES, params).fetchone()
        if computing_here and (row is None or not row[4]):
            return self._compute(conn)
        return None if row is None else FleetFigures(*row[:4])

    def _compute(self, conn: Conn) -> FleetFigures:
        now = round(self._clock(), 6)  # as stored (microseconds): the same figures everywhere
        window = Window.last(self.window_s, now=datetime.fromtimestamp(now, UTC))
        page = FleetPage(min_disconnects=self.min_disconnects, limit=0)
        fleet = fleet_availability(conn, window, FleetFilter(), page)
        figures = FleetFigures(now, fleet.uptime_ratio, fleet.flapping_total, drifted_count(conn))
        conn.execute(_STORE_FIGURES, {
            "at": now, "window": self.window_s, "min": self.min_disconnects,
            "ratio": figures.uptime_ratio, "flapping": figures.flapping,
            "drifted": figures.drifted,
        })  # fmt: skip
        return figures
