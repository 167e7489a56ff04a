"""Restart commands and custom messages against a live server, a real Postgres and real
WebSocket and plain-HTTP agents: delivery (pushed, next poll), the "restart requested" history
row, refusals, the event stream, the audit log."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from opamp_fast.protocol import format_instance_uid, pb
from tests.helpers.agents import CAPS_PYTHON_CLIENT, HTTPAgent, open_ws_agent
from tests.helpers.config_api import api_client, wait_known
from tests.integration.test_cluster import two  # noqa: F401 - instances "a" and "b"
from tests.integration.test_events import events, subscribed

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RESTART_CAPS = CAPS_PYTHON_CLIENT | 0x400  # ... | AcceptsRestartCommand
GADGET = "io.example.gadget/v1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def custom_caps(*caps: str) -> pb.CustomCapabilities:
    return pb.CustomCapabilities(capabilities=caps)


async def history(api: httpx.AsyncClient, uid: bytes) -> list[dict[str, Any]]:
    r = await api.get(f"/api/agents/{format_instance_uid(uid)}/connection-history")
    assert r.status_code == 200, r.text
    return list(r.json()["histories"])


async def audit_actions(api: httpx.AsyncClient, uid: bytes) -> list[tuple[str, str]]:
    r = await api.get(f"/api/audit?target=agent:{format_instance_uid(uid)}")
    assert r.status_code == 200, r.text
    return [(e["action"], e["outcome"]) for e in r.json()["entries"]]


async def test_restart_over_websocket_is_pushed_alone_and_the_reconnect_is_told_apart(
    server: Any,
) -> None:
    async with api_client(server) as api:
        async with open_ws_agent(server.url) as agent:
            agent.caps = RESTART_CAPS
            await agent.full_state("collector")
            await wait_known(api, agent.uid)
            r = await api.post(f"/api/agents/{format_instance_uid(agent.uid)}/restart")
            assert r.status_code == 202, r.text
            body = r.json()
            assert (body["delivery"], body["serving_instance"]) == ("pushed", "test-instance")
            pushed = await agent.receive()
            assert [f.name for f, _ in pushed.ListFields()] == ["instance_uid", "command"]
            assert pushed.command.type == pb.CommandType_Restart
            # What a supervisor restarting its collector looks like: the socket closes...
        async with open_ws_agent(server.url, agent.uid) as again:  # ...and a new one opens
            again.caps = RESTART_CAPS
            reply = await again.full_state("collector")
            assert not reply.HasField("command")  # nothing left over for the new session
            await server.services.writer.flush()
            rows = await history(api, agent.uid)
            assert [h["disconnect_reason"] for h in rows] == [None, "restart requested"]
            detail = (await api.get(f"/api/agents/{format_instance_uid(agent.uid)}")).json()
            assert detail["last_restart_requested_at"] is not None
            assert ("agent.restart", "ok") in await audit_actions(api, agent.uid)
            metrics = (await api.get("/metrics")).text
            assert "opamp_fast_restart_commands_total 1.0" in metrics
            # A later disconnect, unrelated to any restart, keeps its own reason.
        await server.services.writer.flush()
        rows = await history(api, agent.uid)
        assert rows[0]["disconnect_reason"] == "connection closed"


async def test_restart_over_plain_http_comes_with_the_next_poll(server: Any) -> None:
    async with (
        api_client(server) as api,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        agent = HTTPAgent(http, caps=RESTART_CAPS)
        await agent.full_state("sdk")
        await wait_known(api, agent.uid)
        r = await api.post(f"/api/agents/{format_instance_uid(agent.uid)}/restart")
        assert r.status_code == 202 and r.json()["delivery"] == "next_poll", r.text
        reply = await agent.heartbeat()
        assert [f.name for f, _ in reply.ListFields()] == [
            "instance_uid",
            "capabilities",
            "command",
        ]
        assert not (await agent.heartbeat()).HasField("command")  # once
        bye = await agent.request(agent.message(agent_disconnect=pb.AgentDisconnect()))
        assert not bye.HasField("error_response")
        await server.services.writer.flush()
        assert [h["disconnect_reason"] for h in await history(api, agent.uid)] == [
            "restart requested"
        ]


async def test_restart_refusals(server: Any) -> None:
    async with (
        api_client(server) as api,
        api_client(server, role="viewer", sub="vera") as viewer,
        open_ws_agent(server.url) as plain,  # no AcceptsRestartCommand
    ):
        await plain.full_state()
        await wait_known(api, plain.uid)
        path = f"/api/agents/{format_instance_uid(plain.uid)}/restart"
        r = await api.post(path)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "restart_not_supported")
        r = await viewer.post(path)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        assert ("agent.restart", "denied") in await audit_actions(api, plain.uid)
        r = await api.post(f"/api/agents/{'0' * 32}/restart")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "agent_not_found")
        r = await api.post("/api/agents/nope/restart")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_agent_id")
    await server.services.writer.flush()
    async with api_client(server) as api:
        r = await api.post(path)  # offline now: nothing is kept for later
        assert (r.status_code, r.json()["error"]["code"]) == (409, "not_connected")


async def test_custom_messages_both_ways_over_websocket(server: Any) -> None:
    async with (
        api_client(server) as api,
        events(server, "?type=agent.custom_message") as stream,
        open_ws_agent(server.url) as agent,
    ):
        await subscribed(server)
        await agent.request(
            agent.message(
                agent_description=pb.AgentDescription(), custom_capabilities=custom_caps(GADGET)
            )
        )
        await wait_known(api, agent.uid)
        agent_id = format_instance_uid(agent.uid)
        # From the agent: an event at once, the list after the next flush.
        sent = pb.CustomMessage(capability=GADGET, type="status", data=b"\x01paused")
        await agent.request(agent.message(custom_message=sent))
        event = await stream.until(lambda e: e.event == "agent.custom_message")
        assert event.data["agent"] == agent_id
        assert event.data["data"] == {
            "capability": GADGET, "type": "status", "size": 7, "data": b64(b"\x01paused")
        }  # fmt: skip
        # To the agent: pushed at once.
        r = await api.post(
            f"/api/agents/{agent_id}/custom-messages",
            json={"capability": GADGET, "type": "pause", "data": b64(b"now")},
        )
        assert r.status_code == 202, r.text
        assert r.json()["delivery"] == "pushed"
        pushed = await agent.receive()
        assert pushed.custom_message == pb.CustomMessage(
            capability=GADGET, type="pause", data=b"now"
        )
        await server.services.writer.flush()
        listed = (await api.get(f"/api/agents/{agent_id}/custom-messages")).json()["messages"]
        assert [(m["direction"], m["type"], base64.b64decode(m["data"])) for m in listed] == [
            ("to_agent", "pause", b"now"),
            ("from_agent", "status", b"\x01paused"),
        ]
        assert listed[0]["sent_by"] == "alice"
        metrics = (await api.get("/metrics")).text
        assert 'opamp_fast_custom_messages_total{direction="to_agent"} 1.0' in metrics
        assert 'opamp_fast_custom_messages_total{direction="from_agent"} 1.0' in metrics
        only = await api.get(f"/api/agents/{agent_id}/custom-messages?direction=from_agent")
        assert [m["type"] for m in only.json()["messages"]] == ["status"]
        detail = (await api.get(f"/api/agents/{agent_id}")).json()
        assert detail["custom_capabilities"] == [GADGET]
        assert ("agent.custom_message", "ok") in await audit_actions(api, agent.uid)


async def test_custom_messages_from_an_agent_keep_the_newest_hundred(server: Any) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        await agent.full_state()
        for i in range(105):
            msg = pb.CustomMessage(capability=GADGET, type=f"t{i}", data=b"")
            await agent.request(agent.message(custom_message=msg))
        await server.services.writer.flush()
        r = await api.get(f"/api/agents/{format_instance_uid(agent.uid)}/custom-messages")
        kinds = [m["type"] for m in r.json()["messages"]]
        assert len(kinds) == 100 and kinds[0] == "t104" and kinds[-1] == "t5"


async def test_custom_messages_to_a_plain_http_agent_go_one_per_poll(server: Any) -> None:
    async with (
        api_client(server) as api,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        agent = HTTPAgent(http)
        await agent.request(
            agent.message(
                agent_description=pb.AgentDescription(), custom_capabilities=custom_caps(GADGET)
            )
        )
        path = f"/api/agents/{format_instance_uid(agent.uid)}/custom-messages"
        for i in range(16):
            r = await api.post(
                path, json={"capability": GADGET, "type": "n", "data": b64(bytes([i]))}
            )
            assert r.status_code == 202 and r.json()["delivery"] == "next_poll", r.text
        r = await api.post(path, json={"capability": GADGET, "type": "n", "data": ""})
        assert (r.status_code, r.json()["error"]["code"]) == (429, "too_many_pending")
        got = [(await agent.heartbeat()).custom_message.data for _ in range(17)]
        assert got == [bytes([i]) for i in range(16)] + [b""]


async def test_custom_message_refusals(server: Any) -> None:
    async with (
        api_client(server) as api,
        api_client(server, role="viewer", sub="vera") as viewer,
        open_ws_agent(server.url) as agent,
    ):
        await agent.request(
            agent.message(
                agent_description=pb.AgentDescription(), custom_capabilities=custom_caps(GADGET)
            )
        )
        await wait_known(api, agent.uid)
        path = f"/api/agents/{format_instance_uid(agent.uid)}/custom-messages"
        ok = {"capability": GADGET, "type": "t", "data": b64(b"x")}
        cases = [
            ({**ok, "capability": "io.example.other/v1"}, 409, "capability_not_declared"),
            ({**ok, "data": "not base64!"}, 400, "invalid_base64"),
            ({**ok, "data": "QQ"}, 400, "invalid_base64"),  # missing padding
            ({**ok, "data": b64(b"x" * (64 * 1024 + 1))}, 413, "too_large"),
            ({**ok, "type": ""}, 400, "invalid_body"),
            ({**ok, "extra": 1}, 400, "invalid_body"),
            ({"capability": GADGET, "type": "t"}, 400, "invalid_base64"),
        ]
        for body, status, code in cases:
            r = await api.post(path, json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
        r = await viewer.post(path, json=ok)
        assert r.status_code == 403
        r = await viewer.get(path)  # a viewer may read them
        assert r.status_code == 200
        assert ("agent.custom_message", "denied") in await audit_actions(api, agent.uid)
        r = await api.get(f"/api/agents/{'0' * 32}/custom-messages")
        assert r.status_code == 404
        r = await api.get(path + "?direction=sideways")
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_parameter")
    # An agent's own custom message over the bound is refused like an oversized status part.
    async with open_ws_agent(server.url) as big:
        await big.full_state()
        huge = pb.CustomMessage(capability=GADGET, type="t", data=b"x" * (70 * 1024))
        reply = await big.request(big.message(custom_message=huge))
        assert reply.error_response.error_message.startswith("custom_message of ")


async def test_commands_asked_on_one_instance_reach_the_agent_held_by_another(
    two: tuple[Any, Any],  # noqa: F811
) -> None:
    a, b = two
    async with open_ws_agent(a.url) as agent:
        agent.caps = RESTART_CAPS
        await agent.request(
            agent.message(
                agent_description=pb.AgentDescription(), custom_capabilities=custom_caps(GADGET)
            )
        )
        await a.services.writer.flush()
        agent_id = format_instance_uid(agent.uid)
        async with api_client(b) as api:  # asked on b, held by a
            r = await api.post(
                f"/api/agents/{agent_id}/custom-messages",
                json={"capability": GADGET, "type": "ping", "data": b64(b"\x00" * 300)},
            )
            assert r.status_code == 202, r.text
            assert (r.json()["delivery"], r.json()["serving_instance"]) == ("routed", "a")
            got = await agent.receive()
            assert (got.custom_message.type, got.custom_message.data) == ("ping", b"\x00" * 300)
            r = await api.post(f"/api/agents/{agent_id}/custom-messages", json={
                "capability": "io.example.other/v1", "type": "t", "data": ""})  # fmt: skip
            assert (r.status_code, r.json()["error"]["code"]) == (409, "capability_not_declared")
            r = await api.post(f"/api/agents/{agent_id}/restart")
            assert r.status_code == 202 and r.json()["delivery"] == "routed", r.text
            assert (await agent.receive()).command.type == pb.CommandType_Restart
