"""Configuration drift, from what a real agent reports: it applies the config it is given, then
its effective config changes under the same APPLIED status (edited on the host, or fallen
back): drifted since then, in the API, the list filter, the event stream and the metrics, and
a failure for the rollout that gave it; back on what it applied: not drifted."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.storage.rows import effective_config_hash
from tests.helpers.agents import WSAgent, open_ws_agent
from tests.helpers.config_api import agent_detail, api_client, create_config, wait_known

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

APPLIED, APPLYING = 1, 2


def effective(body: str) -> pb.EffectiveConfig:
    config = pb.EffectiveConfig()
    entry = config.config_map.config_map["collector.yaml"]
    entry.body = body.encode()
    entry.content_type = "text/yaml"
    return config


async def report(agent: WSAgent, **parts: Any) -> None:
    await agent.request(agent.message(**parts))


def status(config_hash: bytes, code: int) -> pb.RemoteConfigStatus:
    return pb.RemoteConfigStatus(last_remote_config_hash=config_hash, status=code)  # type: ignore[arg-type]


async def test_an_effective_config_changed_under_applied_is_drift(server: Any) -> None:
    services = server.services
    sub, _, _ = services.events.subscribe(types=frozenset({"agent.drift"}))
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        await agent.full_state("drifter")
        await wait_known(api, agent.uid)
        agent_id = format_instance_uid(agent.uid)
        version = await create_config(api, "base", "receivers: {otlp: {}}\n")
        r = await api.put(f"/api/agents/{agent_id}/config", json={"config": "base"})
        assert r.status_code == 200
        given = (await agent.receive()).remote_config.config_hash
        assert given.hex() == version["hash"]
        applied = effective("receivers: {otlp: {}}\n")
        # The effective config first (applying), then APPLIED: that is what it applied.
        await report(agent, remote_config_status=status(given, APPLYING), effective_config=applied)
        await report(agent, remote_config_status=status(given, APPLIED))
        await services.writer.flush()
        detail = await agent_detail(api, agent.uid)
        assert detail["drifted_at"] is None
        assert detail["applied_config_hash"] == effective_config_hash(applied).hex()

        # Edited on the host: the same APPLIED status, another effective config.
        await report(agent, effective_config=effective("receivers: {}\n"))
        await services.writer.flush()
        detail = await agent_detail(api, agent.uid)
        assert detail["drifted_at"] is not None
        drifted = (await api.get("/api/agents", params={"drifted": "true"})).json()
        assert [a["id"] for a in drifted["agents"]] == [agent_id]
        assert drifted["agents"][0]["drifted_at"] == detail["drifted_at"]
        others = (await api.get("/api/agents", params={"drifted": "false"})).json()
        assert others["agents"] == []
        await services.availability.sample()
        metrics = (await api.get("/metrics")).text
        assert "\nopamp_fast_agents_drifted 1.0\n" in metrics

        # Back on what it applied: no longer drifted.
        await report(agent, effective_config=applied)
        await services.writer.flush()
        assert (await agent_detail(api, agent.uid))["drifted_at"] is None

        # A new config applied with its own effective config: the new baseline.
        await create_config(api, "base", "receivers: {otlp: {}, zipkin: {}}\n")
        r = await api.put(f"/api/agents/{agent_id}/config", json={"config": "base"})
        assert r.status_code == 200
        newer = (await agent.receive()).remote_config.config_hash
        await report(
            agent,
            remote_config_status=status(newer, APPLIED),
            effective_config=effective("receivers: {otlp: {}, zipkin: {}}\n"),
        )
        await services.writer.flush()
        assert (await agent_detail(api, agent.uid))["drifted_at"] is None

    frames = list(sub.queue)
    assert [b'"drifted":true' in f for f in frames] == [True, False]
    assert all(agent_id.encode() in f for f in frames)
    assert effective_config_hash(effective("receivers: {}\n")).hex().encode() in frames[0]


async def test_a_rollout_counts_a_drifted_agent_as_failed(server: Any) -> None:
    """Two agents; the first batch's agent applies the new version, then drifts from it: the
    rollout (no failure allowed) pauses on it."""
    async with (
        api_client(server) as api,
        open_ws_agent(server.url) as one,
        open_ws_agent(server.url) as two,
    ):
        for agent in (one, two):
            await agent.full_state("fleet")
            await wait_known(api, agent.uid)
            r = await api.put(
                f"/api/agents/{format_instance_uid(agent.uid)}/labels",
                json={"labels": {"env": "prod"}},
            )
            assert r.status_code == 200
        await create_config(api, "base", "receivers: {otlp: {}}\n")
        r = await api.put("/api/groups/prod", json={"selector": {"env": "prod"}, "config": "base"})
        assert r.status_code == 200
        for agent in (one, two):
            first = (await agent.receive()).remote_config.config_hash
            await report(agent, remote_config_status=status(first, APPLIED))
        await create_config(api, "base", "receivers: {zipkin: {}}\n")
        rollout = {"batch_percent": 50, "max_failed_percent": 0}
        body = {"selector": {"env": "prod"}, "config": "base", "rollout": rollout}
        assert (await api.put("/api/groups/prod", json=body)).status_code == 200
        admitted = await first_push(one, two)
        given = admitted.pushed
        await report(
            admitted.agent,
            remote_config_status=status(given, APPLIED),
            effective_config=effective("receivers: {zipkin: {}}\n"),
        )
        await server.services.writer.flush()
        await report(admitted.agent, effective_config=effective("receivers: {hand: {}}\n"))
        with anyio.fail_after(10):
            while True:
                state = (await api.get("/api/groups/prod")).json()["rollout"]
                if state["state"] == "paused":
                    break
                await anyio.sleep(0.1)
        assert state["failed"] == 1 and state["applied"] == 0, state
        assert state["reason"].startswith(f"1 of {state['admitted']} agents failed"), state


class Push:
    def __init__(self, agent: WSAgent, pushed: bytes) -> None:
        self.agent = agent
        self.pushed = pushed


async def first_push(*agents: WSAgent) -> Push:
    """The agent of the rollout's first batch: the first to be pushed a config."""
    with anyio.fail_after(5):
        while True:
            for agent in agents:
                with anyio.move_on_after(0.05):
                    msg = await agent.receive()
                    if msg.HasField("remote_config"):
                        return Push(agent, msg.remote_config.config_hash)
