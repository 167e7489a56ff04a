"""``/api/agents/{id}/availability`` and ``/api/fleet/availability``: uptime, disconnects and
flapping agents, computed from connection history (``storage.availability`` has the rules).

Both read Postgres, so they are the same from every instance (up to one writer flush behind).
The window is ``[since, until]``: RFC 3339 date-times, by default the last 24 hours; an
``until`` later than now is now (time that has not passed is not counted as offline).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from ..protocol.codec import format_instance_uid, parse_instance_uid_text
from ..remote_config.model import NAME_PATTERN
from ..storage import availability as av
from ..storage.config_queries import Conn, get_group
from .errors import APIError, agent_not_found, invalid_parameter
from .lifecycle_models import (
    AgentAvailabilityReport,
    FlappingAgentInfo,
    FleetAvailabilityReport,
    OnlineStretch,
    UptimePoint,
    VersionAvailabilityInfo,
)
from .params import (
    AGENT_ID_PARAM,
    LABEL_PARAM,
    PageParam,
    Param,
    cursor_fields,
    parse_labels,
    parse_page,
    path_agent_id,
    query_integer,
    query_time,
    text_schema,
)
from .responses import JSONResponse
from .routing import Operation, Router
from .state import services_of

DEFAULT_WINDOW: Final = timedelta(hours=24)
MAX_WINDOW: Final = timedelta(days=92)
MAX_BUCKETS: Final = 168
# The last flapping agent of a page: its disconnects and uid (worst first, then by id).
FLAPPING_CURSOR_PATTERN: Final = r"^f\.[0-9]{1,18}\.[0-9a-f]{32}$"

_WINDOW_PARAMS = (
    Param(
        "since",
        "query",
        "Start of the window, RFC 3339 (`2026-12-06T10:00:00Z`, fractional seconds allowed); "
        "default: 24 hours before `until`.",
        {"type": "string", "format": "date-time"},
    ),
    Param(
        "until",
        "query",
        "End of the window, RFC 3339; default and at most: now. At most 92 days after `since`.",
        {"type": "string", "format": "date-time"},
    ),
    Param(
        "min_disconnects",
        "query",
        "Disconnects in the window from which an agent is flapping.",
        {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 5},
    ),
)
_FLEET_FILTERS = (
    LABEL_PARAM,
    Param(
        "group",
        "query",
        "Only the members of this group (agents its selector matches).",
        {"type": "string", "pattern": NAME_PATTERN},
    ),
    Param("version", "query", "Only agents reporting this `service.version`.", text_schema()),
    Param(
        "buckets",
        "query",
        f"Also cut the window in this many equal parts (`series`), up to {MAX_BUCKETS}.",
        {"type": "integer", "minimum": 0, "maximum": MAX_BUCKETS, "default": 0},
    ),
)

router = Router(tags=("availability",))


def parse_window(params: QueryParams) -> av.Window:
    now = datetime.now(UTC)
    until = min(query_time(params, "until") or now, now)
    since = query_time(params, "since") or until - DEFAULT_WINDOW
    if since >= until:
        raise invalid_parameter("since", "must be before until (and before now)")
    if until - since > MAX_WINDOW:
        raise invalid_parameter("since", "the window may span at most 92 days")
    return av.Window(since, until)


def _min_disconnects(params: QueryParams) -> int:
    return query_integer(params, "min_disconnects", av.FLAPPING_DISCONNECTS, 1, 1_000_000)


@router.get(
    "/api/agents/{id}/availability",
    Operation(
        "An agent's availability",
        "Uptime, sessions, disconnects by reason, the longest time offline and the online "
        "stretches of the agent in `[since, until]`, from its connection history. Time inside "
        "the window only; an open session counts up to `until`; a window that began before "
        "the agent existed counts from its first connection.",
        params=(AGENT_ID_PARAM, *_WINDOW_PARAMS),
        response=AgentAvailabilityReport,
        errors=(400, 404, 503),
    ),
)
async def agent_availability(request: Request) -> Response:
    uid = path_agent_id(request)
    window = parse_window(request.query_params)
    least = _min_disconnects(request.query_params)
    found = await services_of(request).db.run(lambda conn: av.agent_availability(conn, uid, window))
    if found is None:
        raise agent_not_found(uid)
    return JSONResponse(
        AgentAvailabilityReport(
            agent_id=format_instance_uid(uid),
            since=window.since,
            until=window.until,
            first_seen_at=None if found.first_seen is None else found.first_seen.astimezone(UTC),
            observed_seconds=found.observed_seconds,
            uptime_ratio=found.uptime_ratio,
            online_seconds=found.online_seconds,
            sessions=found.sessions,
            disconnects=found.disconnects,
            disconnects_by_reason=found.disconnects_by_reason,
            longest_offline_seconds=found.longest_offline_seconds,
            mean_session_seconds=found.mean_session_seconds,
            flapping=found.disconnects >= least,
            min_disconnects=least,
            timeline=[
                OnlineStretch(s.start.astimezone(UTC), s.end.astimezone(UTC), s.reason)
                for s in found.timeline
            ],
            timeline_truncated=found.timeline_truncated,
        )
    )


def _flapping_cursor(raw: str | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    disconnects, uid_hex = cursor_fields(raw, FLAPPING_CURSOR_PATTERN, "a flapping-list")
    return int(disconnects), format_instance_uid(bytes.fromhex(uid_hex))


def _text(params: QueryParams, name: str, pattern: str) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > 256 or not re.fullmatch(pattern, raw):
        raise invalid_parameter(name, f"{raw[:40]!r} is not a valid {name}")
    return raw


@router.get(
    "/api/fleet/availability",
    Operation(
        "The fleet's availability",
        "Mean uptime over the agents (each agent's own ratio, as `/api/agents/{id}/"
        "availability` computes it), disconnects by reason, uptime by `service.version`, and "
        "the flapping agents (at least `min_disconnects` disconnects in the window), the worst "
        "first, a page at a time. Filters (`label`, `group`, `version`) combine with AND.",
        params=(PageParam(FLAPPING_CURSOR_PATTERN, (*_WINDOW_PARAMS, *_FLEET_FILTERS)),),
        response=FleetAvailabilityReport,
        errors=(400, 404, 503),
    ),
)
async def fleet_availability(request: Request) -> Response:
    params = request.query_params
    services = services_of(request)
    window = parse_window(params)
    page = parse_page(params, services.settings.api_max_page_size)
    group = _text(params, "group", NAME_PATTERN)
    spec = av.FleetPage(
        min_disconnects=_min_disconnects(params),
        limit=page.limit,
        offset=page.offset if page.cursor is None else 0,
        after=_flapping_cursor(page.cursor),
        buckets=query_integer(params, "buckets", 0, 0, MAX_BUCKETS),
    )
    labels = tuple(parse_labels(params))
    version = _text(params, "version", r"[^\x00]*")

    def work(conn: Conn) -> av.FleetAvailability:
        selector = None
        if group is not None:
            row = get_group(conn, group)
            if row is None:
                raise APIError(404, "group_not_found", f"no group {group!r}")
            selector = row.selector
        flt = av.FleetFilter(labels=labels, selector=selector, version=version)
        return av.fleet_availability(conn, window, flt, spec)

    fleet = await services.db.read(work)  # the group, the fleet's figures and its page agree
    return JSONResponse(_fleet_report(fleet, spec))


def _fleet_report(fleet: av.FleetAvailability, spec: av.FleetPage) -> FleetAvailabilityReport:
    flapping = fleet.flapping  # one more than the page, when there is more
    next_cursor = None
    if len(flapping) > spec.limit:
        flapping = flapping[: spec.limit]
        last = flapping[-1]
        next_cursor = f"f.{last.disconnects}.{parse_instance_uid_text(last.id).hex()}"
    return FleetAvailabilityReport(
        since=fleet.window.since,
        until=fleet.window.until,
        agents=fleet.agents,
        uptime_ratio=fleet.uptime_ratio,
        disconnects=fleet.disconnects,
        disconnects_by_reason=fleet.disconnects_by_reason,
        by_version=[
            VersionAvailabilityInfo(v.version, v.agents, v.uptime_ratio, v.disconnects)
            for v in fleet.by_version
        ],
        min_disconnects=spec.min_disconnects,
        flapping=[FlappingAgentInfo(a.id, a.name, a.disconnects, a.uptime_ratio) for a in flapping],
        flapping_total=fleet.flapping_total,
        limit=spec.limit,
        offset=spec.offset,
        next_cursor=next_cursor,
        series=[UptimePoint(p.since, p.until, p.agents, p.uptime_ratio) for p in fleet.series],
    )
