"""Progressive rollouts over real WebSocket agents: batches, a failing batch pauses the rollout,
rollback returns the group to its previous version, and each step is in the audit log."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import WSAgent, open_ws_agent, wait_for
from tests.helpers.config_api import api_client, create_config, wait_known

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

APPLIED, FAILED = 1, 3


class Fleet:
    """WebSocket agents that apply every config they get, except ``fail`` hashes."""

    def __init__(self) -> None:
        self.agents: list[WSAgent] = []
        self.received: dict[bytes, list[str]] = {}  # uid -> hashes offered, in order
        self.fail: set[str] = set()

    def holding(self, config_hash: str) -> int:
        return sum(1 for got in self.received.values() if got and got[-1] == config_hash)

    async def serve(self, agent: WSAgent) -> None:
        while True:
            msg = await agent.receive(timeout=60)
            if not msg.HasField("remote_config"):
                continue
            digest = msg.remote_config.config_hash
            self.received[agent.uid].append(digest.hex())
            failing = digest.hex() in self.fail
            status = pb.RemoteConfigStatus(
                last_remote_config_hash=digest,
                status=FAILED if failing else APPLIED,  # type: ignore[arg-type]
                error_message="unknown receiver 'kafka'" if failing else "",
            )
            await agent.send(agent.message(remote_config_status=status))


async def with_fleet(
    server: Any, api: httpx.AsyncClient, n: int, scenario: Callable[[Fleet], Awaitable[None]]
) -> None:
    """Run ``scenario`` while ``n`` labelled (``env=prod``) agents serve their configs."""
    fleet = Fleet()
    async with contextlib.AsyncExitStack() as stack:
        for i in range(n):
            agent = await stack.enter_async_context(open_ws_agent(server.url))
            await agent.full_state(f"svc-{i}")
            fleet.agents.append(agent)
            fleet.received[agent.uid] = []
        for agent in fleet.agents:
            await wait_known(api, agent.uid)
            r = await api.put(
                f"/api/agents/{format_instance_uid(agent.uid)}/labels",
                json={"labels": {"env": "prod"}},
            )
            assert r.status_code == 200
        async with anyio.create_task_group() as tg:
            for agent in fleet.agents:
                tg.start_soon(fleet.serve, agent)
            try:
                await scenario(fleet)
            finally:
                tg.cancel_scope.cancel()


async def group(api: httpx.AsyncClient, name: str = "prod") -> dict[str, Any]:
    r = await api.get(f"/api/groups/{name}")
    assert r.status_code == 200
    return dict(r.json())


async def wait_rollout(api: httpx.AsyncClient, state: str, timeout: float = 30) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            rollout = (await group(api))["rollout"]
            if rollout and rollout["state"] == state:
                return dict(rollout)
            await anyio.sleep(0.1)


async def test_rollout_goes_batch_by_batch_to_completion(server) -> None:
    async with api_client(server) as api:
        await with_fleet(server, api, 10, lambda fleet: completion(api, fleet))


async def completion(api: httpx.AsyncClient, fleet: Fleet) -> None:
    v1 = await create_config(api, "col", "v: 1\n")
    v2 = await create_config(api, "col", "v: 2\n")
    r = await api.put("/api/groups/prod", json={"selector": {"env": "prod"}, "config": "col",
                                                "version": 1})  # fmt: skip
    assert r.status_code == 200
    await wait_for(lambda: fleet.holding(v1["hash"]) == 10, timeout=10)
    r = await api.put(
        "/api/groups/prod",
        json={"selector": {"env": "prod"}, "config": "col",
              "rollout": {"batch_percent": 20, "max_failed_percent": 10}},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    rollout = r.json()["rollout"]
    assert rollout["state"] == "running" and rollout["to"] == {"name": "col", "version": 2}
    assert rollout["from"] == {"name": "col", "version": 1}
    assert (rollout["batches"], rollout["admitted"], rollout["eligible"]) == (1, 2, 10)
    await wait_for(lambda: fleet.holding(v2["hash"]) == 2, timeout=5)
    await anyio.sleep(0.3)
    assert fleet.holding(v2["hash"]) <= 4  # never more than the admitted batches
    done = await wait_rollout(api, "completed")
    assert fleet.holding(v2["hash"]) == 10
    assert (done["batches"], done["admitted"], done["applied"], done["failed"]) == (5, 10, 10, 0)
    assert done["progress_percent"] == 100.0
    # Each agent got v1 once, then v2 once.
    assert all(got == [v1["hash"], v2["hash"]] for got in fleet.received.values())
    entries = (await api.get("/api/audit?target=group:prod")).json()["entries"]
    actions = [e["action"] for e in entries]
    assert actions.count("rollout.batch") == 5 and actions[0] == "rollout.complete"
    status = (await api.get("/api/configs/col/status")).json()
    assert status["versions"][0]["applied"] == 10


async def test_failing_batch_pauses_and_rollback_restores(server) -> None:
    async with api_client(server) as api:
        await with_fleet(server, api, 10, lambda fleet: pause_and_rollback(api, fleet))


async def pause_and_rollback(api: httpx.AsyncClient, fleet: Fleet) -> None:
    v1 = await create_config(api, "col", "v: 1\n")
    v2 = await create_config(api, "col", "v: 2 # kafka\n")
    fleet.fail.add(v2["hash"])
    await api.put("/api/groups/prod", json={"selector": {"env": "prod"}, "config": "col",
                                            "version": 1})  # fmt: skip
    await wait_for(lambda: fleet.holding(v1["hash"]) == 10, timeout=10)
    r = await api.put(
        "/api/groups/prod",
        json={"selector": {"env": "prod"}, "config": "col", "version": 2,
              "rollout": {"batch_percent": 20, "max_failed_percent": 10}},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    paused = await wait_rollout(api, "paused")
    assert (paused["admitted"], paused["failed"]) == (2, 2)
    assert "2 of 2 agents failed" in paused["reason"]
    await anyio.sleep(1.0)  # the driver keeps its hands off a paused rollout
    assert (await group(api))["rollout"]["admitted"] == 2
    offered_v2 = [u for u, got in fleet.received.items() if v2["hash"] in got]
    assert len(offered_v2) == 2
    # Why they failed: in the agent detail and the config's status.
    detail = (await api.get(f"/api/agents/{format_instance_uid(offered_v2[0])}")).json()
    rc = detail["remote_config"]
    assert (rc["version"], rc["status"], rc["error"]) == (2, "failed", "unknown receiver 'kafka'")
    errors = (await api.get("/api/configs/col/status")).json()["errors"]
    assert errors == [{"version": 2, "error": "unknown receiver 'kafka'", "agents": 2}]
    # Rollback: v1 again for the two that got v2; nothing new for the others.
    r = await api.post("/api/groups/prod/rollback")
    assert r.status_code == 200, r.text
    back = r.json()
    assert back["config"] == {"name": "col", "version": 1}
    assert back["previous"] == {"name": "col", "version": 2}
    assert back["rollout"]["state"] == "rolled_back"
    await wait_for(lambda: fleet.holding(v1["hash"]) == 10, timeout=5)
    for uid in offered_v2:
        assert fleet.received[uid] == [v1["hash"], v2["hash"], v1["hash"]]
    assert sum(len(got) for got in fleet.received.values()) == 14
    entries = (await api.get("/api/audit?target=group:prod")).json()["entries"]
    steps = [(e["action"], e["actor"]) for e in entries]
    assert steps[0] == ("group.rollback", "alice")
    assert ("rollout.pause", "opamp-fast") in steps
    assert ("rollout.batch", "opamp-fast") in steps
    assert steps[-1] == ("group.put", "alice")
    # Rolling back again returns to v2 (the previous of v1 is now v2): 409 only without one.
    r = await api.post("/api/groups/nogroup/rollback")
    assert r.status_code == 404
