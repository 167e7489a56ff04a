"""Forgetting agents, for real: an operator's DELETE on one instance and across two on one
Postgres, expiry (the fleet's, and a group's for short-lived members), and audit retention
through the one way the append-only trigger leaves open."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.storage.retention import AuditRetention
from tests.helpers.agents import description, open_ws_agent, wait_for
from tests.helpers.config_api import api_client, create_config, wait_known

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPORT_FULL_STATE = pb.ServerToAgentFlags_ReportFullState


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def aquery(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return await anyio.to_thread.run_sync(lambda: query(url, sql, params))


async def connect_and_leave(url: str, uid: bytes | None = None, name: str = "svc", **attrs: str):
    """A WebSocket agent that reports itself, then closes its connection; its uid."""
    async with open_ws_agent(url, uid=uid) as agent:
        await agent.request(agent.message(agent_description=description(name, **attrs)))
    return agent.uid


async def metric_lines(api: httpx.AsyncClient, prefix: str) -> list[str]:
    text = (await api.get("/metrics")).text
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


async def test_an_offline_agent_is_forgotten_everywhere_an_online_one_is_refused(
    server: Any, database_url: str
) -> None:
    services = server.services
    sub, _, _ = services.events.subscribe(types=frozenset({"agent.forgotten"}))
    async with api_client(server, role="admin") as admin, open_ws_agent(server.url) as agent:
        await agent.request(agent.message(agent_description=description("doomed")))
        uid, agent_id = agent.uid, format_instance_uid(agent.uid)
        await wait_known(admin, uid)
        await create_config(admin, "base", "receivers: {}\n")
        r = await admin.put(f"/api/agents/{agent_id}/labels", json={"labels": {"a": "b"}})
        assert r.status_code == 200
        assert (
            await admin.put(f"/api/agents/{agent_id}/config", json={"config": "base"})
        ).is_success
        r = await admin.delete(f"/api/agents/{agent_id}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "agent_online"
    await wait_for(lambda: not services.fleet.registry.get(uid).online)
    await services.writer.flush()
    async with api_client(server, role="operator") as operator:
        r = await operator.delete(f"/api/agents/{agent_id}")
        assert r.status_code == 403  # the admin role forgets agents
    async with api_client(server, role="admin") as admin:
        before = (await admin.get("/api/agents/status/summary")).json()
        r = await admin.delete(f"/api/agents/{agent_id}")
        assert r.status_code == 200, r.text
        assert r.json() == {"agent_id": agent_id, "history_deleted": 0, "forgotten": True}
        # Gone from every list, the summary, the metrics and this instance's memory.
        assert (await admin.get(f"/api/agents/{agent_id}")).status_code == 404
        assert (await admin.delete(f"/api/agents/{agent_id}")).status_code == 404
        listed = (await admin.get("/api/agents")).json()["agents"]
        offline = (await admin.get("/api/agents/offline")).json()
        assert agent_id not in [a["id"] for a in listed + offline["agents"]]
        after = (await admin.get("/api/agents/status/summary")).json()
        assert after["total"] == before["total"] - 1 and after["offline"] == before["offline"] - 1
        assert services.fleet.registry.get(uid) is None
        assert not [ln for ln in await metric_lines(admin, "agent_last_seen_seconds{") if
                    agent_id in ln]  # fmt: skip
        assert 'agents_by_status{status="offline"} 0.0' in await metric_lines(admin, "agents_by")
        forgotten = await metric_lines(admin, "opamp_fast_agents_forgotten_total")
        assert 'opamp_fast_agents_forgotten_total{by="operator"} 1.0' in forgotten
        # Its labels and pin went with it; its history stays (retention removes it in time).
        assert await aquery(database_url, "SELECT 1 FROM agent_config_pins") == []
        history = (await admin.get(f"/api/agents/{agent_id}/connection-history")).json()
        assert history["total"] == 1
        audit = (await admin.get("/api/audit", params={"action": "agent.forget"})).json()
        entry = audit["entries"][0]
        assert entry["target"] == f"agent:{agent_id}" and entry["before"]["labels"] == {"a": "b"}
        assert entry["before"]["name"] == "doomed" and entry["after"]["purge_history"] is False
    assert len(sub.queue) == 1 and b'"by":"operator"' in sub.queue[0]
    assert sub.queue[0].startswith(b"id: ") and b"event: agent.forgotten" in sub.queue[0]

    # It comes back: a new agent, asked for its full state, its row written afresh.
    async with api_client(server, role="admin") as admin, open_ws_agent(server.url, uid) as again:
        reply = await again.heartbeat()
        assert reply.flags & REPORT_FULL_STATE
        await again.request(again.message(agent_description=description("doomed")))
        await wait_known(admin, uid)
        detail = (await admin.get(f"/api/agents/{agent_id}")).json()
        assert detail["labels"] == {} and detail["status"] == "online"
        assert detail["remote_config"]["status"] == "unassigned"


async def test_purge_history_deletes_the_history_too(server: Any, database_url: str) -> None:
    uid = await connect_and_leave(server.url)
    await connect_and_leave(server.url, uid)
    agent_id = format_instance_uid(uid)
    rollup = "SELECT sum(disconnects) FROM agent_uptime_daily WHERE instance_uid = %s"
    async with api_client(server, role="admin") as admin:
        await wait_known(admin, uid)
        await server.services.writer.flush()
        assert await aquery(database_url, rollup, (uid,)) == [(2,)]
        assert (
            await admin.delete(f"/api/agents/{agent_id}?purge_history=maybe")
        ).status_code == 400
        r = await admin.delete(f"/api/agents/{agent_id}", params={"purge_history": "true"})
        assert r.status_code == 200 and r.json()["history_deleted"] == 2
        assert (await admin.get(f"/api/agents/{agent_id}/connection-history")).status_code == 404
        assert await aquery(database_url, rollup, (uid,)) == [(None,)]  # its rollup went too


@pytest.fixture
async def two(start_server: Any, make_settings: Any) -> tuple[Any, Any]:
    servers = []
    for name in ("a", "b"):
        running = await start_server(make_settings(instance_id=name, lease_s=2.0))
        with anyio.fail_after(10):
            await running.services.cluster.listening.wait()
        servers.append(running)
    return servers[0], servers[1]


async def test_forgetting_reaches_every_instance(two: tuple[Any, Any]) -> None:
    a, b = two
    uid = await connect_and_leave(b.url, name="roamer")  # b remembers it (offline) ...
    await connect_and_leave(a.url, uid, name="roamer")  # ... and so does a
    agent_id = format_instance_uid(uid)
    assert a.services.fleet.registry.get(uid) is not None
    assert b.services.fleet.registry.get(uid) is not None
    await a.services.writer.flush()
    await b.services.writer.flush()
    async with api_client(a, role="admin") as on_a, api_client(b, role="admin") as on_b:
        await wait_known(on_b, uid)
        assert (await on_a.delete(f"/api/agents/{agent_id}")).status_code == 200
        # The other instance forgets it on the notice: memory, metrics, answers.
        await wait_for(lambda: b.services.fleet.registry.get(uid) is None)
        assert 'agents_by_status{status="offline"} 0.0' in await metric_lines(on_b, "agents_by")
        assert (await on_b.get(f"/api/agents/{agent_id}")).status_code == 404
        summary = (await on_b.get("/api/agents/status/summary")).json()
        assert summary["total"] == 0
    # Back on b: new there too, asked for its full state.
    async with open_ws_agent(b.url, uid) as again:
        assert (await again.heartbeat()).flags & REPORT_FULL_STATE


async def backdate(url: str, uid: bytes, seconds: float) -> None:
    await aquery(
        url,
        "UPDATE agents SET last_disconnected_at = now() - make_interval(secs => %s)"
        " WHERE instance_uid = %s",
        (seconds, uid),
    )


async def test_expiry_forgets_only_what_it_should(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    server = await start_server(make_settings(forget_offline_after_days=7))
    day, hour = 86400.0, 3600.0
    pod = {"k8s.pod.name": "collector-7f9c"}
    cases: dict[str, tuple[dict[str, str], float, bool]] = {
        # name: (attributes, offline for, forgotten?)
        "old": ({}, 8 * day, True),
        "recent": ({}, 6 * day, False),
        "pod-due": ({**pod, "team": "web"}, 2 * hour, True),
        "pod-young": ({**pod, "team": "web"}, 0.5 * hour, False),
        "vm-in-group": ({"team": "web"}, 2 * hour, False),
        "pod-other-group": ({**pod, "team": "web", "tier": "db"}, 2 * hour, False),
    }
    uids = {name: await connect_and_leave(server.url, name=name, **attrs)
            for name, (attrs, _, _) in cases.items()}  # fmt: skip
    async with api_client(server, role="admin") as admin, open_ws_agent(server.url) as live:
        await live.request(live.message(agent_description=description("live", **pod)))
        for uid in [*uids.values(), live.uid]:
            await wait_known(admin, uid)
        await server.services.writer.flush()
        for name, (_, offline_s, _) in cases.items():
            await backdate(database_url, uids[name], offline_s)
        await backdate(database_url, live.uid, 30 * day)  # an old disconnect: it is online now
        for group, body in {
            "web": {"selector": {"team": "web"}, "forget_offline_after": 3600},
            "db": {"selector": {"team": "web", "tier": "db"}},  # more specific, no expiry
        }.items():
            r = await admin.put(f"/api/groups/{group}", json=body)
            assert r.status_code == 200, r.text
        assert (await admin.get("/api/groups/web")).json()["forget_offline_after"] == 3600
        forgotten = await server.services.lifecycle.run_once()
        assert forgotten == 2
        for name, (_, _, gone) in cases.items():
            status = (await admin.get(f"/api/agents/{format_instance_uid(uids[name])}")).status_code
            assert status == (404 if gone else 200), name
            assert (server.services.fleet.registry.get(uids[name]) is None) == gone, name
        assert (await admin.get(f"/api/agents/{format_instance_uid(live.uid)}")).status_code == 200
        audit = (await admin.get("/api/audit", params={"action": "agent.expire"})).json()
        rows = {tuple(e["after"].get("groups", {"fleet": 0})) for e in audit["entries"]}
        assert rows == {("web",), ("fleet",)}
        assert all(e["actor"] == "opamp-fast" for e in audit["entries"])
        lines = await metric_lines(admin, "opamp_fast_agents_forgotten_total")
        assert 'opamp_fast_agents_forgotten_total{by="expiry"} 2.0' in lines
        assert await server.services.lifecycle.run_once() == 0  # nothing else is due


async def test_audit_rows_go_only_through_retention(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    # The server's own retention off: its first pass, right after startup, could delete the
    # 'ancient' row before the refusals below are tried on it (a DELETE of no row fires no
    # trigger). The passes are run here instead.
    server = await start_server(make_settings(audit_retention_days=0))
    db = server.services.db
    insert = (
        "INSERT INTO audit_log (at, actor, role, action, target, outcome)"
        " VALUES (now() - make_interval(days => %s), 'x', 'admin', %s, 't', 'ok')"
    )
    for days, action in ((400, "ancient"), (2, "recent"), (0, "fresh")):
        await aquery(database_url, insert, (days, action))
    intruder = f"intruder_{uuid.uuid4().hex[:12]}"  # roles belong to the whole cluster
    await aquery(database_url, f"CREATE ROLE {intruder}")
    await aquery(database_url, f"GRANT SELECT, UPDATE, DELETE, TRUNCATE ON audit_log TO {intruder}")
    as_retention = "BEGIN; SET LOCAL ROLE opamp_fast_audit_retention; {}; COMMIT"
    refused = {
        # the server's own role (a superuser here: the trigger binds superusers too)
        "DELETE FROM audit_log WHERE action = 'ancient'": "append-only: DELETE",
        "UPDATE audit_log SET actor = 'y'": "append-only: UPDATE",
        "TRUNCATE audit_log": "append-only: TRUNCATE",
        # another role, even with every privilege granted
        f"BEGIN; SET LOCAL ROLE {intruder}; DELETE FROM audit_log WHERE action = 'ancient'; "
        "COMMIT": "append-only: DELETE",
        # the retention role: only DELETE (no UPDATE privilege), only rows older than a day
        as_retention.format("DELETE FROM audit_log WHERE action = 'fresh'"): "append-only: DELETE",
        as_retention.format("UPDATE audit_log SET actor = 'y'"): "permission denied",
    }
    for sql, why in refused.items():
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=why):
            await aquery(database_url, sql)
    actions = "SELECT action FROM audit_log ORDER BY at"
    assert await aquery(database_url, actions) == [("ancient",), ("recent",), ("fresh",)]
    retention = AuditRetention(db, retention_days=365)
    assert await retention.run_once() == 1
    assert await aquery(database_url, actions) == [("recent",), ("fresh",)]
    assert await AuditRetention(db, retention_days=1).run_once() == 1
    assert await aquery(database_url, actions) == [("fresh",)]


async def test_forgetting_takes_its_custom_messages_and_connection_settings(
    server: Any, database_url: str
) -> None:
    """What an agent had of day-2 features goes with it: the custom messages stored for it, its
    own connection settings (rows and this instance's memory), so one coming back is offered
    nothing of its former self."""
    services = server.services
    own_metrics = pb.AgentCapabilities_ReportsOwnMetrics
    mine = {"telemetry": {"metrics": {"endpoint": "https://mine.example/v1/metrics"}}}
    gadget = "io.example.gadget/v1"
    messages = "SELECT count(*) FROM agent_custom_messages WHERE instance_uid = %s"
    async with api_client(server, role="admin") as admin:
        async with open_ws_agent(server.url) as agent:
            agent.caps |= own_metrics
            caps = pb.CustomCapabilities(capabilities=[gadget])
            await agent.request(
                agent.message(agent_description=description("svc"), custom_capabilities=caps)
            )
            uid, agent_id = agent.uid, format_instance_uid(agent.uid)
            await wait_known(admin, uid)
            r = await admin.put(f"/api/agents/{agent_id}/connection-settings", json=mine)
            assert r.status_code == 200, r.text
            offer = (await agent.receive()).connection_settings
            assert offer.own_metrics.destination_endpoint == "https://mine.example/v1/metrics"
            body = {"capability": gadget, "type": "ping", "data": ""}
            r = await admin.post(f"/api/agents/{agent_id}/custom-messages", json=body)
            assert r.status_code == 202, r.text
        await wait_for(lambda: not services.fleet.registry.get(uid).online)
        await services.writer.flush()
        assert await aquery(database_url, messages, (uid,)) == [(1,)]
        assert (await admin.delete(f"/api/agents/{agent_id}")).status_code == 200
        assert await aquery(database_url, messages, (uid,)) == [(0,)]
        settings = "SELECT 1 FROM agent_connection_settings WHERE instance_uid = %s"
        assert await aquery(database_url, settings, (uid,)) == []
    async with open_ws_agent(server.url, uid) as again:
        again.caps |= own_metrics
        reply = await again.request(again.message(agent_description=description("svc")))
        assert not reply.connection_settings.HasField("own_metrics")
