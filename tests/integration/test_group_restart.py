"""Restarting a group's members in batches against a live server, real WebSocket agents and a
real Postgres: pacing, progress, skipped members, one restart at a time, cancel, refusals."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.protocol import format_instance_uid, pb
from tests.helpers.agents import CAPS_PYTHON_CLIENT, WSAgent, open_ws_agent, wait_for
from tests.helpers.config_api import api_client, wait_known
from tests.helpers.wsclient import ConnectionClosed
from tests.integration.test_cluster import aquery

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RESTART_CAPS = CAPS_PYTHON_CLIENT | 0x400


class Members:
    """WebSocket agents labelled ``env=prod`` that record the commands pushed to them."""

    def __init__(self) -> None:
        self.agents: list[WSAgent] = []
        self.commands: dict[bytes, int] = {}

    def restarted(self) -> int:
        return sum(1 for n in self.commands.values() if n)

    async def listen(self, agent: WSAgent) -> None:
        while True:
            try:
                msg = await agent.receive(timeout=120)
            except ConnectionClosed:
                return
            if msg.HasField("command") and msg.command.type == pb.CommandType_Restart:
                self.commands[agent.uid] += 1


@contextlib.asynccontextmanager
async def members(server: Any, api: httpx.AsyncClient, caps: list[int]) -> AsyncIterator[Members]:
    fleet = Members()
    async with contextlib.AsyncExitStack() as stack:
        for i, agent_caps in enumerate(caps):
            agent = await stack.enter_async_context(open_ws_agent(server.url))
            agent.caps = agent_caps
            await agent.full_state(f"svc-{i}")
            fleet.agents.append(agent)
            fleet.commands[agent.uid] = 0
        for agent in fleet.agents:
            await wait_known(api, agent.uid)
            r = await api.put(
                f"/api/agents/{format_instance_uid(agent.uid)}/labels",
                json={"labels": {"env": "prod"}},
            )
            assert r.status_code == 200
        r = await api.put("/api/groups/prod", json={"selector": {"env": "prod"}})
        assert r.status_code == 200, r.text
        async with anyio.create_task_group() as tg:
            for agent in fleet.agents:
                tg.start_soon(fleet.listen, agent)
            try:
                yield fleet
            finally:
                tg.cancel_scope.cancel()


async def test_a_group_restart_goes_batch_by_batch_and_reports_progress(
    server: Any, database_url: str
) -> None:
    async with (
        api_client(server) as api,
        members(server, api, [RESTART_CAPS] * 6 + [CAPS_PYTHON_CLIENT]) as fleet,
    ):
        r = await api.post("/api/groups/prod/restart", json={"batch_percent": 34, "pause_s": 0})
        assert r.status_code == 202, r.text
        started = r.json()
        assert (started["state"], started["targets"], started["batches"]) == ("running", 6, 1)
        assert started["requested"] == 3  # 34% of 6, rounded up: the first batch, at once
        await wait_for(lambda: fleet.restarted() == 6, timeout=20)

        async def completed() -> dict[str, Any]:
            with anyio.fail_after(20):
                while True:
                    body = dict((await api.get("/api/groups/prod/restart")).json())
                    if body["state"] == "completed":
                        return body
                    await anyio.sleep(0.1)

        done = await completed()
        assert (done["batches"], done["requested"], done["skipped"]) == (2, 6, 0)
        assert done["progress_percent"] == 100.0 and done["next_batch_at"] is None
        assert all(n == 1 for uid, n in fleet.commands.items() if uid != fleet.agents[-1].uid)
        entries = (await api.get("/api/audit?target=group:prod")).json()["entries"]
        actions = [e["action"] for e in entries]
        assert actions.count("group.restart.batch") == 2 and "group.restart" in actions
        stamped = await aquery(
            database_url,
            "SELECT count(*) FROM agents WHERE last_restart_requested_at IS NOT NULL",
        )
        assert stamped == [(6,)]
        metrics = (await api.get("/metrics")).text
        assert "opamp_fast_group_restart_batches_total 2.0" in metrics
        assert "opamp_fast_restart_commands_total 6.0" in metrics


async def test_one_restart_at_a_time_cancel_and_skipped_members(
    server: Any, database_url: str
) -> None:
    async with (
        api_client(server) as api,
        members(server, api, [RESTART_CAPS] * 4) as fleet,
    ):
        body = {"batch_percent": 25, "pause_s": 3600}
        first = await api.post("/api/groups/prod/restart", json=body)
        assert first.status_code == 202 and first.json()["requested"] == 1
        r = await api.post("/api/groups/prod/restart", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "restart_running")
        await wait_for(lambda: fleet.restarted() == 1)
        # A member that went offline before its batch is skipped, not waited for (batches
        # take the targets in uid order).
        waiting = sorted(
            (a for a in fleet.agents if not fleet.commands[a.uid]), key=lambda a: a.uid
        )
        await waiting[0].ws.aclose()
        await wait_for(lambda: not server.services.registry.get(waiting[0].uid).online)
        await server.services.writer.flush()
        await aquery(database_url, "UPDATE group_restarts SET next_batch_at = now() RETURNING 1")
        assert await server.services.commands.drive()  # the pause is over: the next batch
        progress = (await api.get("/api/groups/prod/restart")).json()
        assert (progress["batches"], progress["requested"], progress["skipped"]) == (2, 1, 1)
        r = await api.delete("/api/groups/prod/restart")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert r.json()["ended_by"] == "alice"
        # Cancelled: no instance sends another batch, whatever the time.
        await aquery(database_url, "UPDATE group_restarts SET next_batch_at = now() RETURNING 1")
        assert await server.services.commands.drive() == []
        left = await aquery(
            database_url, "SELECT count(*) FROM group_restart_agents WHERE batch IS NULL"
        )
        assert left == [(2,)]
        assert fleet.restarted() == 1
        r = await api.delete("/api/groups/prod/restart")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "restart_not_running")
        assert (await api.get("/api/groups/prod/restart")).json()["state"] == "cancelled"


async def test_group_restart_refusals(server: Any) -> None:
    async with (
        api_client(server) as api,
        api_client(server, role="viewer", sub="vera") as viewer,
    ):
        for method in ("GET", "POST", "DELETE"):
            r = await api.request(method, "/api/groups/ghost/restart", json={})
            assert (r.status_code, r.json()["error"]["code"]) == (404, "group_not_found")
        assert (await api.put("/api/groups/quiet", json={"selector": {}})).status_code == 200
        for method in ("GET", "DELETE"):
            r = await api.request(method, "/api/groups/quiet/restart")
            assert (r.status_code, r.json()["error"]["code"]) == (404, "restart_not_found")
        for bad in ({"batch_percent": 0}, {"pause_s": -1}, {"pause_s": "1"}, {"other": 1}):
            r = await api.post("/api/groups/quiet/restart", json=bad)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body"), bad
        r = await viewer.post("/api/groups/quiet/restart", json={})
        assert r.status_code == 403
        r = await viewer.delete("/api/groups/quiet/restart")
        assert r.status_code == 403
        entries = (await api.get("/api/audit?target=group:quiet")).json()["entries"]
        denied = {e["action"] for e in entries if e["outcome"] == "denied"}
        assert denied == {"group.restart", "group.restart.cancel"}
        # A group with no member to restart: done at once.
        r = await api.post("/api/groups/quiet/restart", json={})
        assert r.status_code == 202 and r.json()["state"] == "completed", r.text
        assert r.json()["targets"] == 0
