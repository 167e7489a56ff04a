"""The components agents report, against a live server, real WebSocket and plain-HTTP agents and
a real Postgres: shown in the agent's detail, checked before a config is assigned (a pin, a
group, a rollout: 422 ``components_missing`` unless ``?force=true``, audited), counted on group
pages."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from opamp_fast.protocol import format_instance_uid, pb
from tests.helpers.agents import CAPS_PYTHON_CLIENT, HTTPAgent, description, open_ws_agent
from tests.helpers.config_api import agent_detail, api_client, create_config, wait_known

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COMPONENT_CAPS = CAPS_PYTHON_CLIENT | 0x4000  # ... | ReportsAvailableComponents
NEEDS = """\
receivers:
  otlp:
    protocols: {grpc: {}}
  hostmetrics/host:
    collection_interval: 10s
processors:
  batch: {}
exporters:
  otlphttp:
    endpoint: https://example.invalid
service:
  pipelines:
    metrics: {receivers: [otlp, hostmetrics/host], processors: [batch], exporters: [otlphttp]}
"""


def components(**kinds: list[str]) -> pb.AvailableComponents:
    """What a collector reports: kinds at the top, component types under each."""
    available = pb.AvailableComponents(hash=repr(sorted(kinds.items())).encode())
    for kind, types in kinds.items():
        details = available.components[kind]
        for t in types:
            entry = details.sub_component_map[t]
            entry.metadata.add(key="code.namespace").value.string_value = f"x/{t}"
    return available


FULL = components(
    receivers=["otlp", "hostmetrics"], processors=["batch"], exporters=["otlphttp", "debug"]
)
SMALL = components(receivers=["otlp"], processors=["batch"], exporters=["debug"])


async def report(agent: Any, available: pb.AvailableComponents | None, name: str) -> None:
    agent.caps = COMPONENT_CAPS
    fields: dict[str, Any] = {"agent_description": description(name)}
    if available is not None:
        fields["available_components"] = available
    reply = await agent.request(agent.message(**fields))
    assert not reply.HasField("error_response")


async def label(api: httpx.AsyncClient, uid: bytes) -> None:
    await wait_known(api, uid)
    r = await api.put(
        f"/api/agents/{format_instance_uid(uid)}/labels", json={"labels": {"env": "prod"}}
    )
    assert r.status_code == 200, r.text


async def test_components_are_shown_and_checked_before_a_pin(server: Any) -> None:
    async with (
        api_client(server) as api,
        open_ws_agent(server.url) as full,
        open_ws_agent(server.url) as small,
        open_ws_agent(server.url) as silent,
    ):
        await report(full, FULL, "full")
        await report(small, SMALL, "small")
        await report(silent, None, "silent")  # never reports its components
        for agent in (full, small, silent):
            await wait_known(api, agent.uid)
        await server.services.writer.flush()
        shown = (await agent_detail(api, small.uid))["available_components"]
        assert shown["hash"] == SMALL.hash.hex()
        assert set(shown["components"]) == {"receivers", "processors", "exporters"}
        receivers = shown["components"]["receivers"]["sub_component_map"]
        assert receivers == {"otlp": {"metadata": {"code.namespace": "x/otlp"}}}
        assert (await agent_detail(api, silent.uid))["available_components"] is None

        await create_config(api, "col", NEEDS)
        small_id = format_instance_uid(small.uid)
        r = await api.put(f"/api/agents/{small_id}/config", json={"config": "col"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "components_missing" and error["config"] == "col@1"
        assert error["agents"] == [
            {"id": small_id, "missing": {"exporters": ["otlphttp"], "receivers": ["hostmetrics"]}}
        ]
        assert error["agents_total"] == 1 and "?force=true" in error["message"]
        assert (await api.get(f"/api/agents/{small_id}/config")).json()["pinned"] is None
        # An agent with every type, and one that never said: assigned.
        for ok in (full, silent):
            r = await api.put(
                f"/api/agents/{format_instance_uid(ok.uid)}/config", json={"config": "col"}
            )
            assert r.status_code == 200, r.text
        r = await api.put(f"/api/agents/{small_id}/config?force=maybe", json={"config": "col"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_parameter")
        r = await api.put(f"/api/agents/{small_id}/config?force=true", json={"config": "col"})
        assert r.status_code == 200, r.text
        entries = (await api.get(f"/api/audit?target=agent:{small_id}")).json()["entries"]
        forced = next(e for e in entries if e["action"] == "agent.config")["after"]
        assert forced["components"] == {
            "forced": True, "agents_lacking_components": 1, "first": small_id
        }  # fmt: skip


async def test_group_assignments_and_rollouts_are_checked_and_counted(server: Any) -> None:
    async with (
        api_client(server) as api,
        api_client(server, role="viewer", sub="vera") as viewer,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_ws_agent(server.url) as full,
        open_ws_agent(server.url) as small,
    ):
        plain = HTTPAgent(http)  # a plain-HTTP collector that reports its components too
        await report(full, FULL, "full")
        await report(small, SMALL, "small")
        await report(plain, FULL, "plain")
        for agent in (full, small, plain):
            await label(api, agent.uid)
        await server.services.writer.flush()
        await create_config(api, "col", NEEDS)
        await create_config(api, "basic", "receivers:\n  otlp: {}\nexporters:\n  debug: {}\n")
        body = {"selector": {"env": "prod"}, "config": "col"}
        r = await api.put("/api/groups/prod", json=body)
        assert r.status_code == 422, r.text
        assert [a["id"] for a in r.json()["error"]["agents"]] == [format_instance_uid(small.uid)]
        assert (await api.get("/api/groups/prod")).status_code == 404  # nothing was saved
        # A config every member can take: assigned, and counted so on the group page.
        r = await api.put("/api/groups/prod", json={**body, "config": "basic"})
        assert r.status_code == 200, r.text
        assert r.json()["components"] == {
            "config": "basic@1", "compatible": 3, "incompatible": 0, "unreported": 0
        }  # fmt: skip
        # A rollout to the other config is checked the same way, before its first batch.
        rollout = {**body, "rollout": {"batch_percent": 50, "max_failed_percent": 50}}
        r = await api.put("/api/groups/prod", json=rollout)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "components_missing")
        assert (await api.get("/api/groups/prod")).json()["rollout"] is None
        r = await viewer.put("/api/groups/prod?force=true", json=rollout)
        assert r.status_code == 403
        r = await api.put("/api/groups/prod?force=true", json=rollout)
        assert r.status_code == 200 and r.json()["rollout"]["state"] == "running", r.text
        counted = (await viewer.get("/api/groups/prod")).json()["components"]
        assert counted == {"config": "col@1", "compatible": 2, "incompatible": 1, "unreported": 0}
        listed = (await viewer.get("/api/groups")).json()["groups"]
        assert listed[0]["components"] == counted
        entries = (await api.get("/api/audit?target=group:prod")).json()["entries"]
        puts = [e for e in entries if e["action"] == "group.put" and e["outcome"] == "ok"]
        assert puts[0]["after"]["components"]["forced"] is True
