"""Availability from connection history, against a schedule the test drives for real: agents
online 3 s, offline 2 s, back, silent until their heartbeat timeout, back, and gone with a
clean goodbye, beside an agent online all along. Every field of both answers is checked against
the schedule (as the test's clock saw it) within one heartbeat tick, over a window that began
before the agents existed and one that cuts sessions in half."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.storage import availability as av
from tests.helpers.agents import WSAgent, description, new_uid, open_ws_agent, wait_for
from tests.helpers.config_api import api_client

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TICK_S = 0.2  # the heartbeat wheel's resolution: the tolerance of every figure
TIMEOUT_S = 1.0
BEAT_S = 0.25  # how often a live agent of the test talks (well within its timeout)


@dataclass
class Schedule:
    """One agent's sessions as the test drove them: (start, end or None, reason)."""

    first: float = 0.0
    sessions: list[tuple[float, float | None, str | None]] = field(default_factory=list)

    def expected(self, since: float, until: float) -> dict[str, Any]:
        begin = max(since, self.first)
        online, sessions, edges = 0.0, 0, [begin]
        reasons: Counter[str] = Counter()
        for start, end, reason in self.sessions:
            stop = until if end is None else end
            if stop <= since or start >= until:
                continue
            sessions += 1
            if end is not None and end <= until:
                reasons[reason or ""] += 1
            a, b = max(start, begin), min(stop, until)
            online += b - a
            edges += [a, b]
        edges.append(until)
        gaps = [edges[i + 1] - edges[i] for i in range(0, len(edges), 2)]
        return {
            "observed_seconds": until - begin,
            "online_seconds": online,
            "uptime_ratio": online / (until - begin),
            "sessions": sessions,
            "disconnects": sum(reasons.values()),
            "disconnects_by_reason": dict(reasons),
            "longest_offline_seconds": max(gaps),
            "mean_session_seconds": online / sessions,
        }


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def close(actual: float, expected: float, tol: float, what: str) -> None:
    assert abs(actual - expected) <= tol, f"{what}: {actual} vs {expected} (+/- {tol})"


def check(answer: dict[str, Any], want: dict[str, Any], who: str) -> None:
    """Every figure of an agent's answer against the schedule, within one tick."""
    for key in ("sessions", "disconnects", "disconnects_by_reason"):
        assert answer[key] == want[key], f"{who} {key}: {answer[key]} vs {want[key]}"
    for key in ("observed_seconds", "online_seconds", "longest_offline_seconds"):
        close(answer[key], want[key], TICK_S, f"{who} {key}")
    close(answer["mean_session_seconds"], want["mean_session_seconds"], TICK_S, who)
    close(answer["uptime_ratio"], want["uptime_ratio"], TICK_S / want["observed_seconds"], who)


@pytest.fixture
async def fast_server(start_server: Any, make_settings: Any) -> Any:
    return await start_server(
        make_settings(
            heartbeat_interval_s=1,
            heartbeat_timeout_s=TIMEOUT_S,
            heartbeat_timeout_factor=1.0,
            heartbeat_tick_s=TICK_S,
        )
    )


async def talk(agent: WSAgent, seconds: float) -> float:
    """Heartbeats for ``seconds``; returns when the server answered the last one."""
    end = time.time() + seconds
    last = time.time()
    while time.time() < end:
        await agent.heartbeat()
        last = time.time()
        await anyio.sleep(BEAT_S)
    return last


async def greet(agent: WSAgent, version: str) -> float:
    """The agent's first message; when the server took it (the middle of the round trip)."""
    before = time.time()
    await agent.request(agent.message(agent_description=description("svc", **{
        "service.version": version})))  # fmt: skip
    return (before + time.time()) / 2


async def drive_a(server: Any, a: Schedule) -> bytes:
    """Online 3 s, closed; offline 2 s; back 3 s, then silent until the timeout; offline 2 s;
    back 3 s, then a clean goodbye."""
    registry = server.services.registry
    async with open_ws_agent(server.url) as agent:
        start = a.first = await greet(agent, "1.0")
        await talk(agent, 3.0)
        before = time.time()
    a.sessions.append((start, (before + time.time()) / 2, "connection closed"))
    await anyio.sleep(2.0)
    async with open_ws_agent(server.url, agent.uid) as again:
        start = await greet(again, "1.0")
        last = await talk(again, 3.0)
        await wait_for(lambda: not registry.get(agent.uid).online, TIMEOUT_S + 2)
    a.sessions.append((start, last + TIMEOUT_S, "heartbeat timeout"))
    await anyio.sleep(2.0)
    async with open_ws_agent(server.url, agent.uid) as third:
        start = await greet(third, "1.0")
        await talk(third, 3.0)
        before = time.time()
        await third.request(third.message(agent_disconnect=pb.AgentDisconnect()))
        a.sessions.append((start, (before + time.time()) / 2, "agent_disconnect"))
    return agent.uid


async def availability(api: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    r = await api.get(path, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


@contextlib.asynccontextmanager
async def driven(server: Any) -> AsyncIterator[dict[str, Any]]:
    """Agent A through its schedule while B stays online (as long as the block runs); their
    uids and schedules."""
    begin = time.time()
    a, b = Schedule(), Schedule()
    async with open_ws_agent(server.url) as steady:
        b.first = await greet(steady, "2.0")
        b.sessions.append((b.first, None, None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(talk, steady, 60.0)
            uid_a = await drive_a(server, a)
            await server.services.writer.flush()
            yield {"A": (uid_a, a), "B": (steady.uid, b), "begin": begin}
            tg.cancel_scope.cancel()


async def test_agent_and_fleet_answers_follow_the_schedule(fast_server: Any) -> None:
    """One schedule (about 15 s), two sets of checks: the figures, then series, filters,
    pages and refusals."""
    async with driven(fast_server) as run:
        await answers_follow_the_schedule(fast_server, run)
        await series_filters_pages_and_refusals(fast_server, run)
        await gauges_follow_the_schedule(fast_server, run)
        await rollup_follows_the_writer(fast_server)


async def answers_follow_the_schedule(server: Any, run: dict[str, Any]) -> None:
    end = time.time()
    (uid_a, a), (uid_b, b) = run["A"], run["B"]
    s1, _, s3 = a.sessions
    windows = {
        "before they existed, up to now": (run["begin"] - 30.0, end),
        "cutting sessions in half": ((s1[0] + s1[1]) / 2, (s3[0] + s3[1]) / 2),  # type: ignore[operator]
    }
    async with api_client(server, role="viewer") as api:
        for label, (since, until) in windows.items():
            params = {"since": rfc3339(since), "until": rfc3339(until)}
            answers = {}
            for name, (uid, schedule) in (("A", (uid_a, a)), ("B", (uid_b, b))):
                path = f"/api/agents/{format_instance_uid(uid)}/availability"
                answer = await availability(api, path, min_disconnects=2, **params)
                want = schedule.expected(since, until)
                check(answer, want, f"{name}, {label}")
                assert answer["flapping"] is (want["disconnects"] >= 2)
                assert answer["since"] == params["since"] and answer["until"] == params["until"]
                answers[name] = answer
            await check_fleet(api, params, answers, {"A": a.expected(since, until),
                                                     "B": b.expected(since, until)})  # fmt: skip
        # B is still online: its open session counts up to `until`, the whole window.
        now = await availability(api, f"/api/agents/{format_instance_uid(uid_b)}/availability")
        assert now["uptime_ratio"] == pytest.approx(1.0) and now["disconnects"] == 0
        assert now["timeline"][-1]["ended_by"] is None


async def check_fleet(
    api: httpx.AsyncClient,
    params: dict[str, str],
    agents: dict[str, dict[str, Any]],
    want: dict[str, dict[str, Any]],
) -> None:
    """The fleet's answer is made of the same per-agent figures."""
    fleet = await availability(api, "/api/fleet/availability", min_disconnects=2, **params)
    assert fleet["agents"] == 2
    mean = (want["A"]["uptime_ratio"] + want["B"]["uptime_ratio"]) / 2
    close(fleet["uptime_ratio"], mean, TICK_S / want["A"]["observed_seconds"], "fleet uptime")
    assert fleet["disconnects"] == want["A"]["disconnects"]
    assert fleet["disconnects_by_reason"] == want["A"]["disconnects_by_reason"]
    versions = {v["version"]: v for v in fleet["by_version"]}
    assert set(versions) == {"1.0", "2.0"}
    for name, version in (("A", "1.0"), ("B", "2.0")):
        row = versions[version]
        assert row["agents"] == 1 and row["disconnects"] == want[name]["disconnects"]
        assert row["uptime_ratio"] == pytest.approx(agents[name]["uptime_ratio"], abs=1e-6)
    flapping = fleet["flapping"]
    assert fleet["flapping_total"] == len(flapping) == 1
    assert flapping[0]["id"] == agents["A"]["agent_id"]
    assert flapping[0]["disconnects"] == want["A"]["disconnects"]
    assert flapping[0]["uptime_ratio"] == pytest.approx(agents["A"]["uptime_ratio"], abs=1e-6)
    only_b = await availability(api, "/api/fleet/availability", version="2.0", **params)
    assert only_b["agents"] == 1 and only_b["disconnects"] == 0 and only_b["flapping"] == []
    assert only_b["uptime_ratio"] == pytest.approx(agents["B"]["uptime_ratio"], abs=1e-6)


async def gauges_follow_the_schedule(server: Any, run: dict[str, Any]) -> None:
    """The two gauges are the last hour of the fleet answer, read on a timer: a scrape between
    two readings shows the last one, whatever happened since."""
    (_, a), (_, b) = run["A"], run["B"]
    monitor = server.services.availability
    monitor.min_disconnects = 2  # A disconnected three times
    figures = await monitor.sample()
    assert figures is not None
    now = figures.at
    mean = (a.expected(now - 3600, now)["uptime_ratio"] + b.expected(now - 3600, now)[
        "uptime_ratio"]) / 2  # fmt: skip
    async with api_client(server, role="viewer") as api:
        text = (await api.get("/metrics")).text
        wanted = ("opamp_fast_agents_flapping", "opamp_fast_fleet_uptime")
        gauges = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                  if ln.startswith(wanted)}  # fmt: skip
        assert gauges["opamp_fast_agents_flapping"] == 1.0
        close(gauges["opamp_fast_fleet_uptime_ratio"], mean, TICK_S / 10, "uptime gauge")
        monitor.min_disconnects = 5  # the next reading: nobody flaps that much
        await monitor.sample()
        text = (await api.get("/metrics")).text
        assert "\nopamp_fast_agents_flapping 0.0\n" in text


async def rollup_follows_the_writer(server: Any) -> None:
    """Every session the writer closed (whichever of its statements did) is in the daily
    rollup, with its online time and its disconnect, and nothing else is."""

    def read(conn: Any) -> tuple[list[Any], list[Any]]:
        history = conn.execute(
            "SELECT instance_uid, round(sum(date_part('epoch', disconnected_at - connected_at))"
            "::numeric, 3), count(*) FROM agent_connection_history"
            " WHERE disconnected_at IS NOT NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
        rollup = conn.execute(
            "SELECT instance_uid, round(sum(online_s)::numeric, 3), sum(disconnects)"
            " FROM agent_uptime_daily GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return history, rollup

    history, rollup = await server.services.db.run(read)
    assert history and [tuple(r) for r in rollup] == [tuple(r) for r in history]


async def series_filters_pages_and_refusals(server: Any, run: dict[str, Any]) -> None:
    (uid_a, a), (_, b) = run["A"], run["B"]
    since, until = a.first - 1.0, time.time()
    params = {"since": rfc3339(since), "until": rfc3339(until)}
    async with api_client(server, role="operator") as api:
        # Labels and groups select agents; a page of one flapping agent at a time.
        r = await api.put(f"/api/agents/{format_instance_uid(uid_a)}/labels",
                          json={"labels": {"site": "x"}})  # fmt: skip
        assert r.status_code == 200
        r = await api.put("/api/groups/site-x", json={"selector": {"site": "x"}})
        assert r.status_code == 200
        for query in ({"label": "site:x"}, {"group": "site-x"}):
            only_a = await availability(api, "/api/fleet/availability", **query, **params)
            assert only_a["agents"] == 1 and only_a["by_version"][0]["version"] == "1.0"
        r = await api.get("/api/fleet/availability", params={"group": "nope", **params})
        assert r.status_code == 404 and r.json()["error"]["code"] == "group_not_found"
        page = await availability(api, "/api/fleet/availability", min_disconnects=1, limit=1,
                                  **params)  # fmt: skip
        assert page["flapping_total"] == 1 and page["next_cursor"] is None
        # Buckets: each part of the window with the mean uptime of the agents observed in it.
        cut = await availability(api, "/api/fleet/availability", buckets=4, **params)
        assert cut["series"][0]["since"] == params["since"]
        assert cut["series"][-1]["until"] == params["until"]
        step = (until - since) / 4
        for i, point in enumerate(cut["series"]):
            lo, hi = since + i * step, since + (i + 1) * step
            want = [s.expected(lo, hi)["uptime_ratio"] for s in (a, b) if s.first < hi]
            assert point["agents"] == len(want)
            close(point["uptime_ratio"], sum(want) / len(want), TICK_S / step, f"bucket {i}")
        refused = (
            {"since": "yesterday"},
            {"since": params["until"], "until": params["since"]},
            {"since": "2020-01-01T00:00:00Z", "until": "2020-06-01T00:00:00Z"},
            {"min_disconnects": "0"},
            {"buckets": "169"},
            {"cursor": "f.1.zz"},
        )
        for bad in refused:
            r = await api.get("/api/fleet/availability", params=bad)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
        r = await api.get(f"/api/agents/{'0' * 32}/availability")
        assert r.status_code == 404


def random_history(rng: random.Random, t0: datetime, n_agents: int) -> list[list[Any]]:
    """Sessions over five days per agent: short and long, one running across several midnights,
    some ending exactly at midnight, the last one sometimes still open."""
    agents = []
    for _ in range(n_agents):
        t, sessions = t0 + timedelta(seconds=rng.uniform(0, 7200)), []
        while t < t0 + timedelta(days=5):
            length = timedelta(seconds=rng.choice([30, 600, 5000, 40000, 150000]) * rng.random())
            end = t + length
            if rng.random() < 0.1:  # snap to the next midnight
                end = (end + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            sessions.append([t, end, rng.choice(["connection closed", "heartbeat timeout"])])
            t = end + timedelta(seconds=rng.choice([0, 5, 900, 20000]) * rng.random())
        if rng.random() < 0.5:
            sessions[-1][1] = None  # still connected
        agents.append(sessions)
    return agents


def reaching(sessions: list[list[Any]], window: av.Window) -> list[Any]:
    """The sessions that reach into the window, as the database selects them."""
    return [
        tuple(s) for s in sessions if s[0] < window.until and (s[1] is None or s[1] > window.since)
    ]


def assert_same_agent_figures(got: Any, want: Any) -> None:
    """The database's answer for one agent and the Python reference (``summarize``)."""
    assert got is not None
    for key in ("first_seen", "sessions", "disconnects", "disconnects_by_reason"):
        assert getattr(got, key) == getattr(want, key), key
    for key in ("observed_seconds", "online_seconds", "longest_offline_seconds"):
        assert getattr(got, key) == pytest.approx(getattr(want, key), abs=1e-3), key
    assert [(s.reason, round(s.start.timestamp(), 3), round(s.end.timestamp(), 3))
            for s in got.timeline] == [
        (s.reason, round(s.start.timestamp(), 3), round(s.end.timestamp(), 3))
        for s in want.timeline]  # fmt: skip


async def test_rollup_answers_as_raw_history_does(server: Any, database_url: str) -> None:
    """The fleet answer over whole days (the daily rollup plus raw partial days) equals the
    answer from raw history alone and the per-agent answers, for windows cut anywhere; the
    rollup is kept by the triggers whether a session is inserted closed or closed later."""
    rng = random.Random(7)
    t0 = (datetime.now(UTC) - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    agents = random_history(rng, t0, 12)
    uids = [new_uid() for _ in agents]
    instance = server.services.settings.instance_id

    def write() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for uid, sessions in zip(uids, agents, strict=True):
                conn.execute(
                    "INSERT INTO agents (instance_uid, uid_text, status, created_at)"
                    " VALUES (%s, %s, 'offline', %s)",
                    (uid, format_instance_uid(uid), t0),
                )
                for i, (start, end, reason) in enumerate(sessions):
                    closed_later = i % 2 == 0  # half inserted open, closed by an UPDATE
                    row = conn.execute(
                        "INSERT INTO agent_connection_history (session_id, instance_uid,"
                        " connected_at, disconnected_at, disconnect_reason, transport,"
                        " serving_instance) VALUES (gen_random_uuid(), %s, %s, %s, %s, 'ws',"
                        " %s) RETURNING id",  # this instance's: no lost instance to repair
                        (uid, start, None if closed_later else end, reason, instance),
                    ).fetchone()
                    if closed_later and end is not None:
                        conn.execute(
                            "UPDATE agent_connection_history SET disconnected_at = %s"
                            " WHERE id = %s",
                            (end, row[0]),
                        )

    await anyio.to_thread.run_sync(write)
    db = server.services.db
    windows = [(t0 + timedelta(hours=a), t0 + timedelta(hours=b)) for a, b in (
        (0, 120), (7.25, 101.5), (24, 72), (30, 49), (0.5, 143.9), (50, 50.5))]  # fmt: skip
    windows.append((t0 + timedelta(days=2, hours=3), datetime.now(UTC)))
    for since, until in windows:
        window = av.Window(since, until)
        days = av.whole_days(window)

        def both(conn: Any, window: av.Window = window, days: Any = days) -> tuple[Any, Any]:
            page = av.FleetPage(limit=50, min_disconnects=1)
            out = []
            for d in (None, days):
                sql, params = av.fleet_sql(av.FleetFilter(), page, d)
                params.update(since=window.since, until=window.until)
                out.append(conn.execute(sql, params, prepare=False).fetchone())
            return out[0], out[1]

        raw, rolled = await db.run(both)
        per_agent = [av.summarize(reaching(sessions, window), window, t0) for sessions in agents]
        observed = [a for a in per_agent if a.uptime_ratio is not None]
        for answer in (raw, rolled):
            assert answer[0] == len(observed)
            mean = sum(a.uptime_ratio for a in observed) / len(observed)  # type: ignore[misc]
            assert answer[1] == pytest.approx(mean, abs=1e-6), (since, until, days)
            assert answer[2] == sum(a.disconnects for a in per_agent)
            reasons: Counter[str] = Counter()
            for a in per_agent:
                reasons.update(a.disconnects_by_reason)
            by_reason = json.loads(answer[3]) if isinstance(answer[3], str) else answer[3]
            assert by_reason == dict(reasons)
        assert raw[5] == rolled[5] and [a[:3] for a in raw[6]] == [a[:3] for a in rolled[6]]
        for uid, want in zip(uids, per_agent, strict=True):
            got = await db.run(partial(av.agent_availability, uid=uid, window=window))
            assert_same_agent_figures(got, want)
    # and through the route, over the whole days
    async with api_client(server, role="viewer") as api:
        since, until = windows[0]
        report = await availability(
            api, "/api/fleet/availability", since=rfc3339(since.timestamp()),
            until=rfc3339(until.timestamp()),
        )  # fmt: skip
        window = av.Window(since, until)
        per_agent = [av.summarize([tuple(s) for s in ss], window, t0) for ss in agents]
        assert report["disconnects"] == sum(a.disconnects for a in per_agent)


def test_a_large_close_after_small_ones_is_planned_for_its_size(database_url: str) -> None:
    """The rollup trigger's join of its transition tables is planned for the statement at hand:
    on a connection whose first close was of one session (as a writer's often is), closing
    40,000 sessions at once (a shutdown, a reaped instance) stays linear. With the plan cached
    from that close (a nested loop over the two tables) it took ~7 s at 10,000 rows and grew with
    the square, far past the statement timeout below; planned per call it takes ~2 s."""
    from opamp_fast.storage.migrations import migrate_sync

    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate_sync(conn)
        for instance, n in (("small", 1), ("big", 40_000)):
            conn.execute(
                "INSERT INTO agent_connection_history (session_id, instance_uid, connected_at,"
                " transport, serving_instance) SELECT gen_random_uuid(),"
                " decode(md5(g::text || %s), 'hex'), now() - interval '1 hour', 'ws', %s"
                " FROM generate_series(1, %s) AS g",
                (instance, instance, n),
            )
        close = (
            "UPDATE agent_connection_history SET disconnected_at = now(), disconnect_reason = %s"
            " WHERE serving_instance = %s AND disconnected_at IS NULL"
        )
        conn.execute(close, ("connection closed", "small"))
        conn.execute("SET statement_timeout = '60s'")
        conn.execute(close, ("server shutdown", "big"))
        rolled = conn.execute(
            "SELECT reason, sum(disconnects)::int, count(DISTINCT instance_uid)::int"
            " FROM agent_uptime_daily WHERE reason <> '' GROUP BY reason ORDER BY reason"
        ).fetchall()
    assert rolled == [("connection closed", 1, 1), ("server shutdown", 40_000, 40_000)]


async def test_one_instance_computes_the_fleet_figures_and_the_others_read_them(
    database_url: str,
) -> None:
    """The metrics' fleet figures are computed once per interval for the whole fleet: an
    instance finding fresh ones (another's) uses them, and one finding them stale while another
    computes keeps the stored ones; nobody runs the fleet-wide statement twice an interval."""
    from opamp_fast.storage import Database, apply_migrations

    db = Database(database_url)
    await db.open()
    try:
        await apply_migrations(db)
        now = [time.time()]
        a, b = (av.AvailabilityMonitor(db, interval_s=60, clock=lambda: now[0]) for _ in "ab")
        first = await a.refresh()  # nothing stored yet: computed and stored
        assert first is not None and first.drifted == 0
        await aexec(db, "INSERT INTO agents (instance_uid, uid_text, status, drifted_at) "
                        "VALUES (%s, %s, 'offline', now())", (b"\x01" * 16, "01" * 16))  # fmt: skip
        now[0] += 30
        assert await b.refresh() == first  # fresh: a's, not computed again (it would say 1)

        now[0] += 31  # stale; and another instance computing (its lock held)
        with psycopg.connect(database_url) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (av.FIGURES_LOCK_KEY,))
            assert await b.refresh() == first
        second = await b.refresh()  # the lock free: b computes
        assert second is not None and second.drifted == 1
        assert second.at == pytest.approx(now[0], abs=1e-6)
        await aexec(db, "INSERT INTO agents (instance_uid, uid_text, status, drifted_at) "
                        "VALUES (%s, %s, 'offline', now())", (b"\x02" * 16, "02" * 16))  # fmt: skip
        assert await a.refresh() == second
        asked = await a.sample()  # asked to, an instance computes at once, and stores them
        assert asked is not None and asked.drifted == 2
        assert await b.refresh() == asked
    finally:
        await db.close()


async def aexec(db: Any, sql: str, params: tuple[Any, ...]) -> None:
    await db.run(lambda conn: conn.execute(sql, params))
