"""Several instances on one Postgres behave as one fleet: the same answers from each,
commands routed to the instance holding the agent, takeover by a newer session elsewhere, lost
instances reaped by a survivor, no false loss after a database outage, and --workers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.auth import agent_token_key, load_key_material, mint_agent_token, mint_token
from opamp_fast.protocol import format_instance_uid
from tests.helpers.agents import HTTPAgent, WSAgent, open_ws_agent, wait_for, ws_url
from tests.helpers.wsclient import ConnectionClosed, open_ws

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE_S = 2.0


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def aquery(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await anyio.to_thread.run_sync(lambda: query(url, sql, params))


@pytest.fixture
async def two(start_server: Any, make_settings: Any) -> tuple[Any, Any]:
    """Instances "a" and "b" on the same database, listening for notices."""
    servers = []
    for name in ("a", "b"):
        running = await start_server(make_settings(instance_id=name, lease_s=LEASE_S))
        with anyio.fail_after(10):
            await running.services.cluster.listening.wait()
        servers.append(running)
    return servers[0], servers[1]


def api_client(running: Any) -> httpx.AsyncClient:
    token = mint_token(load_key_material(running.services.settings), subject="ops", ttl_s=600)
    return httpx.AsyncClient(
        base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def flush_all(*servers: Any) -> None:
    for running in servers:
        await running.services.writer.flush()


async def test_every_instance_gives_the_same_answers(two: tuple[Any, Any]) -> None:
    a, b = two
    async with open_ws_agent(a.url) as on_a, httpx.AsyncClient(base_url=b.url) as http:
        await on_a.full_state("on-a")
        on_b = HTTPAgent(http)
        await on_b.full_state("on-b")
        await flush_all(a, b)
        answers = []
        for running in (a, b):
            async with api_client(running) as api:
                summary = (await api.get("/api/agents/status/summary")).json()
                online = (await api.get("/api/agents/online")).json()
                detail = (await api.get(f"/api/agents/{on_a.uid.hex()}")).json()
                active = (await api.get(f"/api/agents/{on_a.uid.hex()}/active-connection")).json()
                summary.pop("counts_as_of")
                detail.pop("last_seen_at")
                active.pop("duration_seconds")
                active.pop("last_seen_at")
                answers.append((summary, online, detail, active))
        assert answers[0] == answers[1]
        summary, online, detail, active = answers[0]
        assert (summary["total"], summary["online"], summary["instances"]) == (2, 2, 2)
        assert summary["online_by_transport"] == {"ws": 1, "http": 1}
        assert [x["id"] for x in online["agents"]] == sorted(
            format_instance_uid(u) for u in (on_a.uid, on_b.uid)
        )
        assert detail["serving_instance"] == "a" and detail["status"] == "online"
        assert active["serving_instance"] == "a" and active["transport"] == "ws"


async def test_disconnect_is_routed_to_the_instance_holding_the_agent(
    two: tuple[Any, Any], database_url: str
) -> None:
    a, b = two
    async with open_ws_agent(a.url) as agent:
        await agent.full_state()
        await flush_all(a)
        async with api_client(b) as api:  # asked on b, held by a
            r = await api.post(f"/api/agents/{agent.uid.hex()}/disconnect")
            assert r.status_code == 202, r.text
            assert r.json()["serving_instance"] == "a"
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await agent.ws.get_message()
        assert info.value.reason.code == 4002
    await flush_all(a)
    rows = await aquery(
        database_url,
        "SELECT disconnect_reason FROM agent_connection_history WHERE instance_uid = %s",
        (agent.uid,),
    )
    assert rows == [("disconnected by an operator",)]
    async with api_client(b) as api:
        again = await api.post(f"/api/agents/{agent.uid.hex()}/disconnect")
        assert again.status_code == 409 and again.json()["error"]["code"] == "not_connected"


async def test_newer_session_on_another_instance_ends_the_older(
    two: tuple[Any, Any], database_url: str
) -> None:
    a, b = two
    async with open_ws_agent(a.url) as old:
        await old.full_state()
        await flush_all(a)
        async with open_ws_agent(b.url, old.uid) as new:  # the agent came back through b
            await new.full_state()
            await flush_all(b)  # b's flush tells a
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await old.ws.get_message()
            assert info.value.reason.code == 4000
            await wait_for(lambda: not a.services.registry.get(old.uid).online)
            await flush_all(a, b)
            rows = await aquery(
                database_url,
                "SELECT status, serving_instance FROM agents WHERE instance_uid = %s",
                (old.uid,),
            )
            assert rows == [("online", "b")]  # never online twice, never offline meanwhile
            history = await aquery(
                database_url,
                "SELECT serving_instance, disconnect_reason FROM agent_connection_history"
                " WHERE instance_uid = %s ORDER BY id",
                (old.uid,),
            )
            assert history == [("a", "superseded by a new connection"), ("b", None)]
            async with api_client(a) as api:
                summary = (await api.get("/api/agents/status/summary")).json()
            assert summary["online"] == 1


async def test_an_unproven_claim_through_another_instance_never_displaces_a_proven_agent(
    two: tuple[Any, Any], database_url: str
) -> None:
    """Instance b cannot know that the uid is held, with proof, by a: its database write is
    refused instead (the stored row is a's, untouched), b ends the claimant's session and
    answers the next claims with a new uid; a never lets its agent go. The agent itself coming
    back through b with its credentials still takes over."""
    a, b = two
    key = agent_token_key(a.services.settings)
    assert key is not None
    uid = os.urandom(16)
    token = mint_agent_token(key, instance_uid=str(uuid.UUID(bytes=uid)), ttl_s=600)
    bearer = [("Authorization", f"Bearer {token}")]
    agent_row = "SELECT status, serving_instance, agent_name FROM agents WHERE instance_uid = %s"
    async with open_ws(ws_url(a.url), extra_headers=bearer) as ws:
        owner = WSAgent(ws, uid)
        await owner.full_state("the-owner")
        await flush_all(a)
        async with open_ws_agent(b.url, uid) as claimant:
            await claimant.full_state("an-impostor")  # b cannot tell yet
            await flush_all(b)  # refused by the database: b ends the claimant's session
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await claimant.ws.get_message()
            assert info.value.reason.code == 4003
        async with open_ws_agent(b.url, uid) as again:  # b knows now: a new uid, at once
            reply = await again.full_state("an-impostor")
            assert len(reply.agent_identification.new_instance_uid) == 16
        await flush_all(a, b)
        assert a.services.registry.get(uid).online
        assert (await owner.heartbeat()).instance_uid == uid
        rows = await aquery(database_url, agent_row, (uid,))
        assert rows == [("online", "a", "the-owner")]
        assert b.services.fleet.claims_refused_total == 2
        history = await aquery(
            database_url,
            "SELECT serving_instance, disconnect_reason FROM agent_connection_history"
            " WHERE instance_uid = %s ORDER BY id",
            (uid,),
        )
        assert history == [("a", None), ("b", "instance uid held by a proven connection")]
        # The agent itself, through b: it takes over from a.
        async with open_ws(ws_url(b.url), extra_headers=bearer) as ws2:
            back = WSAgent(ws2, uid)
            assert not (await back.full_state("the-owner")).HasField("agent_identification")
            await flush_all(b)
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await ws.get_message()
            assert info.value.reason.code == 4000
            await wait_for(lambda: not a.services.registry.get(uid).online)
            assert await aquery(database_url, agent_row, (uid,)) == [("online", "b", "the-owner")]


ONLINE = "SELECT count(*) FROM agents WHERE status = 'online'"


async def three_agents_online(url: str, database_url: str) -> list[bytes]:
    """Three HTTP agents of the server at ``url``, online in the database."""
    uids = []
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(3):
            agent = HTTPAgent(http)
            await agent.full_state()
            uids.append(agent.uid)
    await wait_for(lambda: query(database_url, ONLINE) == [(3,)], timeout=10)
    return uids


async def test_a_killed_instance_is_declared_lost_by_a_survivor(
    launch: Any, start_server: Any, make_settings: Any, database_url: str
) -> None:
    doomed = launch(instance_id="doomed", lease_s=str(LEASE_S))
    await doomed.ready()
    survivor = await start_server(make_settings(instance_id="survivor", lease_s=LEASE_S))
    uids = await three_agents_online(doomed.url, database_url)
    os.kill(doomed.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.proc.wait(10)
    await wait_for(
        lambda: (
            query(database_url, "SELECT count(*) FROM agents WHERE status = 'online'") == [(0,)]
        ),
        timeout=LEASE_S * 4 + 5,
    )
    noticed_after = time.monotonic() - killed_at
    assert noticed_after < LEASE_S * 2 + 2  # within the lease, plus one renewal round
    history = query(database_url, "SELECT DISTINCT disconnect_reason FROM agent_connection_history")
    assert history == [("server lost",)]
    (lost,) = query(
        database_url,
        "SELECT lost_by, online_ws + online_http FROM server_instances"
        " WHERE instance_id = 'doomed'",
    )
    assert lost == ("survivor", 0)
    # The survivor's lease task records it once the reaping transaction it committed returns.
    cluster = survivor.services.cluster
    await wait_for(lambda: [x.instance_id for x in cluster.lost_reaped] == ["doomed"], timeout=5)
    # Its agents come back through the survivor.
    async with httpx.AsyncClient(base_url=survivor.url) as http:
        back = HTTPAgent(http, uids[0])
        await back.full_state()
    await survivor.services.writer.flush()
    assert query(
        database_url, "SELECT serving_instance FROM agents WHERE instance_uid = %s", (uids[0],)
    ) == [("survivor",)]


async def test_rows_a_shutdown_drain_left_open_are_closed_by_a_survivor_as_a_shutdown(
    launch: Any, start_server: Any, make_settings: Any, database_url: str
) -> None:
    """SIGTERM while another transaction holds one of the instance's agent rows: its drain runs
    past its bound and commits nothing, and the process exits 0 once the drain's connection is
    cut (as Postgres' or an operator's timeout would). Nobody starts it again (a scale-down): a
    survivor closes its rows once its lease has run out, as the drain would have, "server
    shutdown" at the time the drain began, not "server lost"."""
    stopping = launch(instance_id="stopping", lease_s=str(LEASE_S), drain_timeout_s="1")
    await stopping.ready()
    survivor = await start_server(make_settings(instance_id="survivor", lease_s=LEASE_S))
    uids = await three_agents_online(stopping.url, database_url)
    waiting = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("SELECT 1 FROM agents WHERE instance_uid = %s FOR UPDATE", (uids[0],))
        stopping.proc.terminate()
        await wait_for(lambda: bool(query(database_url, waiting)), timeout=15)
        await anyio.sleep(1.5)  # past the drain's bound
        await aquery(database_url, f"SELECT pg_terminate_backend(({waiting}))")
        assert await anyio.to_thread.run_sync(stopping.proc.wait, 15) == 0
        assert await aquery(database_url, ONLINE) == [(3,)]
    still_open = "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
    await wait_for(lambda: query(database_url, still_open) == [(0,)], timeout=LEASE_S * 4 + 5)
    history = await aquery(
        database_url,
        "SELECT DISTINCT h.disconnect_reason, h.disconnected_at = i.stopping_at"
        " FROM agent_connection_history AS h JOIN server_instances AS i"
        " ON i.instance_id = h.serving_instance",
    )
    assert history == [("server shutdown", True)]
    agents = await aquery(database_url, "SELECT DISTINCT status, disconnect_reason FROM agents")
    assert agents == [("offline", "server shutdown")]
    cluster = survivor.services.cluster
    await wait_for(lambda: bool(cluster.lost_reaped), timeout=5)
    assert [(x.instance_id, x.reason) for x in cluster.lost_reaped] == [
        ("stopping", "server shutdown")
    ]


async def test_no_instance_is_declared_lost_because_the_database_was_away(
    two: tuple[Any, Any], database_url: str, postgres_admin_url: str
) -> None:
    from urllib.parse import urlsplit

    dbname = urlsplit(database_url).path.lstrip("/")

    def admin(sql: str, *params: Any) -> None:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(sql, params or None)

    def block() -> None:
        admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", dbname)

    await anyio.to_thread.run_sync(block)
    await anyio.sleep(LEASE_S * 2.5)  # every lease runs out while the database is away
    await anyio.to_thread.run_sync(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    await anyio.sleep(LEASE_S * 3)  # both renew, then judge each other
    rows = await aquery(database_url, "SELECT instance_id, lost_at FROM server_instances")
    assert sorted(rows) == [("a", None), ("b", None)]
    assert not two[0].services.cluster.lost_reaped and not two[1].services.cluster.lost_reaped


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


async def test_workers_share_the_port_survive_a_killed_worker_and_drain_on_sigterm(
    launch: Any, database_url: str
) -> None:
    supervisor = launch(workers="2", instance_id="host", lease_s="30")
    await supervisor.ready()
    await wait_for(lambda: len(children_of(supervisor.proc.pid)) == 2, timeout=10)
    for _ in range(40):  # a connection each, spread over the workers by the kernel
        async with httpx.AsyncClient(base_url=supervisor.url, timeout=10) as http:
            await HTTPAgent(http).full_state()
    async with httpx.AsyncClient(base_url=supervisor.url, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    assert 'opamp_fast_worker_up{worker="0"} 1.0' in metrics
    assert 'opamp_fast_worker_up{worker="1"} 1.0' in metrics
    await wait_for(
        lambda: (
            query(database_url, "SELECT count(*) FROM agents WHERE status = 'online'") == [(40,)]
        ),
        timeout=10,
    )
    holders = dict(
        query(
            database_url,
            "SELECT serving_instance, count(*) FROM agents GROUP BY serving_instance",
        )
    )
    assert set(holders) == {"host/0", "host/1"}  # both workers took agents

    victim = children_of(supervisor.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    await wait_for(
        lambda: (
            len(children_of(supervisor.proc.pid)) == 2
            and victim not in children_of(supervisor.proc.pid)
        ),
        timeout=15,
    )  # restarted
    await supervisor.ready()
    # The restarted worker repaired what its predecessor left open (or a sibling reaped it).
    await wait_for(
        lambda: (
            query(
                database_url,
                "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL",
            )
            < [(40,)]
        ),
        timeout=15,
    )
    async with open_ws_agent(supervisor.url) as agent:  # served after the restart
        assert (await agent.full_state()).instance_uid == agent.uid
        supervisor.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            with anyio.fail_after(15):
                await agent.ws.get_message()
    code = await anyio.to_thread.run_sync(supervisor.proc.wait, 40)
    assert code == 0, supervisor.output()
    assert query(
        database_url, "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
    ) == [(0,)]
    reasons = {r for (r,) in query(
        database_url, "SELECT DISTINCT disconnect_reason FROM agent_connection_history"
    )}  # fmt: skip
    assert "server shutdown" in reasons
    assert reasons <= {"server shutdown", "server restart", "server lost"}
    assert query(database_url, "SELECT count(*) FROM agents WHERE status = 'online'") == [(0,)]
