"""Connection settings against a live server: own-telemetry offers (own_metrics/traces/logs) and
the OpAMP connection itself (endpoint, headers, heartbeat), per group and per agent, with real
WebSocket and HTTP agents, the official Python client, an OTLP/HTTP receiver, real Postgres."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from opentelemetry._opamp import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as client_pb

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import HTTPAgent, open_ws_agent
from tests.helpers.config_api import api_client, wait_known
from tests.helpers.otlp import otlp_receiver

pytestmark = pytest.mark.postgres

OWN_METRICS, OWN_TRACES, OWN_LOGS = 0x40, 0x20, 0x80
ACCEPTS_OPAMP, REPORTS_SETTINGS_STATUS = 0x100, 0x8000
CAPS = 0x3007 | OWN_METRICS | ACCEPTS_OPAMP | REPORTS_SETTINGS_STATUS
SECRET = "Bearer s3cret-t0ken-never-shown"


def headers_of(part: Any) -> dict[str, str]:
    return {h.key: h.value for h in part.headers.headers}


def settings_status(offer_hash: bytes, status: int, error: str = "") -> pb.ConnectionSettingsStatus:
    return pb.ConnectionSettingsStatus(
        last_connection_settings_hash=offer_hash, status=status, error_message=error
    )


async def put_group(api: httpx.AsyncClient, name: str, selector: dict[str, str]) -> None:
    r = await api.put(f"/api/groups/{name}", json={"selector": selector})
    assert r.status_code == 200, r.text


async def view(api: httpx.AsyncClient, uid: bytes) -> dict[str, Any]:
    r = await api.get(f"/api/agents/{format_instance_uid(uid)}/connection-settings")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_view(api: httpx.AsyncClient, uid: bytes, status: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            shown = await view(api, uid)
            if shown["status"] == status:
                return shown
            await anyio.sleep(0.05)


async def test_own_telemetry_offered_by_capability_once_per_hash(server: Any) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        agent.caps = CAPS
        first = await agent.full_state("svc")
        # Nothing configured: the server's heartbeat interval, nothing else.
        assert first.connection_settings.opamp.heartbeat_interval_seconds == 30
        assert not first.connection_settings.HasField("own_metrics")
        await wait_known(api, agent.uid)
        await put_group(api, "all", {})
        with otlp_receiver() as receiver:
            endpoint = receiver.url + "/v1/metrics"
            body = {
                "telemetry": {
                    "metrics": {"endpoint": endpoint, "headers": {"Authorization": SECRET}},
                    "traces": {"endpoint": receiver.url + "/v1/traces"},
                }
            }
            r = await api.put("/api/groups/all/connection-settings", json=body)
            assert r.status_code == 200, r.text
            assert SECRET not in r.text
            assert r.json()["telemetry"]["metrics"]["headers"] == {"Authorization": "<redacted>"}
            # Pushed at once; traces not offered: the agent does not report its own traces.
            offer = (await agent.receive()).connection_settings
            assert offer.own_metrics.destination_endpoint == endpoint
            assert headers_of(offer.own_metrics) == {"Authorization": SECRET}
            assert not offer.HasField("own_traces") and not offer.HasField("own_logs")
            assert offer.opamp.heartbeat_interval_seconds == 30  # every opamp offer has one
            # The offered URL works: an agent of our own sends its metrics there.
            async with httpx.AsyncClient() as http:
                sent = await http.post(
                    offer.own_metrics.destination_endpoint,
                    content=b"",
                    headers={
                        **headers_of(offer.own_metrics),
                        "content-type": "application/x-protobuf",
                    },
                )
            assert sent.status_code == 200
            assert receiver.count("/v1/metrics") == 1
            assert receiver.headers["/v1/metrics"]["authorization"] == SECRET
        shown = await view(api, agent.uid)
        assert (
            shown["metrics"]["status"] == "pending" and shown["traces"]["status"] == "not_supported"
        )
        assert shown["offered_hash"] == offer.hash.hex()
        # The agent applies it and says so: the server stores it and never offers it again.
        applied = settings_status(offer.hash, 1)
        reply = await agent.request(agent.message(connection_settings_status=applied))
        assert not reply.HasField("connection_settings")
        shown = await wait_view(api, agent.uid, "applied")
        assert shown["metrics"] == {
            "endpoint": endpoint,
            "headers": {"Authorization": "<redacted>"},
            "source": "group",
            "status": "applied",
            "heartbeat_interval_seconds": None,
        }
        assert shown["group"] == "all" and shown["reported"]["status"] == "APPLIED"
        assert SECRET not in str(await api.get(f"/api/agents/{format_instance_uid(agent.uid)}"))

        # Logs for the group: this agent does not report its own logs, its offer is unchanged,
        # nothing is pushed (the next message it gets is the reply to its heartbeat).
        body["telemetry"]["logs"] = {"endpoint": "https://logs.example/v1/logs"}
        body["telemetry"]["metrics"]["headers"] = {"Authorization": "<redacted>"}  # kept
        assert (await api.put("/api/groups/all/connection-settings", json=body)).status_code == 200
        assert not (await agent.heartbeat()).HasField("connection_settings")

        # A new metrics endpoint is a new hash: pushed, and the agent's status is pending again.
        body["telemetry"]["metrics"]["endpoint"] = "https://otlp.example:4318/v1/metrics"
        assert (await api.put("/api/groups/all/connection-settings", json=body)).status_code == 200
        changed = (await agent.receive()).connection_settings
        assert changed.hash != offer.hash
        assert headers_of(changed.own_metrics) == {"Authorization": SECRET}  # kept, not masked
        assert (await view(api, agent.uid))["metrics"]["status"] == "pending"

    # A reconnect whose first message reports the current hash is not offered it again.
    async with open_ws_agent(server.url, uid=agent.uid) as again:
        again.caps = CAPS
        first = await again.request(
            again.message(connection_settings_status=settings_status(changed.hash, 1))
        )
        assert not first.HasField("connection_settings")


async def test_http_agent_and_the_official_python_client_get_own_telemetry(server: Any) -> None:
    async with api_client(server) as api:
        await put_group(api, "all", {})
        body = {"telemetry": {"logs": {"endpoint": "https://logs.example:4318/v1/logs"}}}
        assert (await api.put("/api/groups/all/connection-settings", json=body)).status_code == 200
    async with httpx.AsyncClient(base_url=server.url) as http:
        agent = HTTPAgent(http, caps=0x3001 | OWN_LOGS)
        reply = await agent.full_state("http-agent")
        assert reply.connection_settings.own_logs.destination_endpoint.endswith("/v1/logs")
        assert not reply.connection_settings.HasField("opamp")  # no AcceptsOpAMPConnectionSettings
        assert not (await agent.heartbeat()).HasField("connection_settings")  # once per session
    # The official client lets an agent say it reports its own logs and hands over the reply.
    client = OpAMPClient(
        endpoint=server.url + "/v1/opamp",
        timeout_millis=3000,
        agent_identifying_attributes={"service.name": "py-agent"},
        capabilities=client_pb.AgentCapabilities_ReportsStatus
        | client_pb.AgentCapabilities_ReportsHeartbeat
        | client_pb.AgentCapabilities_ReportsOwnLogs,
    )
    reply = await anyio.to_thread.run_sync(client.send, client.build_full_state_message())
    assert reply.connection_settings.own_logs.destination_endpoint == (
        "https://logs.example:4318/v1/logs"
    )
    beat = await anyio.to_thread.run_sync(client.send, client.build_heartbeat_message())
    assert not beat.HasField("connection_settings")


async def test_opamp_endpoint_must_be_confirmed_and_the_change_is_audited(server: Any) -> None:
    new = "wss://opamp-2.example:4320/v1/opamp"
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        agent.caps = CAPS
        await agent.full_state("svc")
        await wait_known(api, agent.uid)
        await put_group(api, "move", {"service.name": "svc"})
        path = "/api/groups/move/connection-settings"
        for opamp, code in (
            ({"endpoint": new}, "endpoint_not_confirmed"),
            ({"endpoint": new, "confirm_endpoint": new + "x"}, "endpoint_not_confirmed"),
            ({"confirm_endpoint": new}, "invalid_body"),
            ({"endpoint": "ftp://x/", "confirm_endpoint": "ftp://x/"}, "invalid_body"),
            ({"heartbeat_interval_seconds": 0}, "invalid_body"),
        ):
            r = await api.put(path, json={"opamp": opamp})
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        assert (await api.get(path)).json() == {"group": "move", "telemetry": {}, "opamp": None}
        opamp = {
            "endpoint": new,
            "confirm_endpoint": new,
            "headers": {"Authorization": SECRET},
            "heartbeat_interval_seconds": 45,
        }
        r = await api.put(path, json={"opamp": opamp})
        assert r.status_code == 200 and SECRET not in r.text
        pushed = (await agent.receive()).connection_settings
        offer = pushed.opamp
        assert offer.destination_endpoint == new and offer.heartbeat_interval_seconds == 45
        assert headers_of(offer) == {"Authorization": SECRET}
        # The agent's heartbeat timeout follows its offered interval (2 x 45 s).
        assert server.services.registry.get(agent.uid).timeout_s == 90
        # The agent could not reach the new server: it says so, the detail shows it.
        failed = settings_status(pushed.hash, 3, "dial failed: Authorization: Bearer s3cr3t-t0ken")
        await agent.request(agent.message(connection_settings_status=failed))
        shown = await wait_view(api, agent.uid, "failed")
        assert shown["opamp"]["endpoint"] == new and shown["opamp"]["status"] == "failed"
        assert shown["reported"]["error_message"] == "dial failed: Authorization: Bearer <redacted>"
        detail = (await api.get(f"/api/agents/{format_instance_uid(agent.uid)}")).json()
        assert detail["connection_settings"]["opamp"]["status"] == "failed"
        # Audited, with the header redacted.
        page = await api.get("/api/audit", params={"action": "group.connection_settings.put"})
        entry = page.json()["entries"][0]
        assert entry["target"] == "group:move" and entry["before"] is None
        assert entry["after"]["opamp"]["endpoint"] == new
        assert entry["after"]["opamp"]["headers"] == {"Authorization": "<redacted>"}
        assert SECRET not in page.text


async def test_agent_override_replaces_group_parts_one_by_one(server: Any) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        agent.caps = CAPS | OWN_TRACES
        await agent.full_state("svc")
        await wait_known(api, agent.uid)
        await put_group(api, "all", {})
        group = {
            "telemetry": {
                "metrics": {"endpoint": "https://group.example/v1/metrics"},
                "traces": {"endpoint": "https://group.example/v1/traces"},
            }
        }
        assert (await api.put("/api/groups/all/connection-settings", json=group)).status_code == 200
        await agent.receive()
        agent_path = f"/api/agents/{format_instance_uid(agent.uid)}/connection-settings"
        mine = {"telemetry": {"metrics": {"endpoint": "https://mine.example/v1/metrics"}}}
        r = await api.put(agent_path, json=mine)
        assert r.status_code == 200, r.text
        shown = r.json()
        assert shown["metrics"]["endpoint"] == "https://mine.example/v1/metrics"
        assert shown["metrics"]["source"] == "agent" and shown["traces"]["source"] == "group"
        offer = (await agent.receive()).connection_settings
        assert offer.own_metrics.destination_endpoint == "https://mine.example/v1/metrics"
        assert offer.own_traces.destination_endpoint == "https://group.example/v1/traces"
        r = await api.delete(agent_path)
        assert r.status_code == 200 and r.json()["override"] is None
        back = (await agent.receive()).connection_settings
        assert back.own_metrics.destination_endpoint == "https://group.example/v1/metrics"
        # Deleting the group's settings leaves the server's heartbeat offer.
        assert (await api.delete("/api/groups/all/connection-settings")).status_code == 200
        plain = (await agent.receive()).connection_settings
        assert not plain.HasField("own_metrics") and plain.opamp.heartbeat_interval_seconds == 30


async def test_bad_settings_and_roles(server: Any) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        await agent.full_state("svc")
        await wait_known(api, agent.uid)
        await put_group(api, "g", {})
        path = "/api/groups/g/connection-settings"
        metrics = "https://otlp.example/v1/metrics"
        for body in (
            {"telemetry": {"spans": {"endpoint": metrics}}},
            {"telemetry": {"metrics": {"endpoint": "otlp.example:4318"}}},
            {"telemetry": {"metrics": {"endpoint": metrics, "headers": {"bad name": "x"}}}},
            {"telemetry": {"metrics": {"endpoint": metrics, "headers": {"a": "x\r\ny: z"}}}},
            {"telemetry": {"metrics": {"endpoint": metrics, "tls_ca_pem": "not a certificate"}}},
            {"opamp": {"heartbeat_interval_seconds": True}},
            {"other": 1},
        ):
            r = await api.put(path, json=body)
            assert r.status_code == 400, (body, r.text)
        masked = {"telemetry": {"metrics": {"endpoint": metrics, "headers": {"k": "<redacted>"}}}}
        r = await api.put(path, json=masked)
        assert r.status_code == 400 and r.json()["error"]["code"] == "masked_header"
        assert (await api.put("/api/groups/nope/connection-settings", json={})).status_code == 404
        unknown = "/api/agents/00000000-0000-0000-0000-000000000001/connection-settings"
        assert (await api.put(unknown, json={})).status_code == 404
        assert (await api.get(unknown)).status_code == 404
        agent_id = format_instance_uid(agent.uid)
        async with api_client(server, role="viewer", sub="vic") as viewer:
            assert (await viewer.get(path)).status_code == 200
            assert (
                await viewer.get(f"/api/agents/{agent_id}/connection-settings")
            ).status_code == 200
            for method, url, action in (
                ("PUT", path, "group.connection_settings.put"),
                ("DELETE", path, "group.connection_settings.delete"),
                (
                    "PUT",
                    f"/api/agents/{agent_id}/connection-settings",
                    "agent.connection_settings.put",
                ),
                ("POST", f"/api/agents/{agent_id}/rotate-certificate", "agent.certificate.rotate"),
            ):
                r = await viewer.request(method, url, json={} if method == "PUT" else None)
                assert r.status_code == 403, (url, r.text)
                assert f"may not {action}" in r.json()["error"]["message"]
        denied = (await api.get("/api/audit", params={"actor": "vic"})).json()["entries"]
        assert {e["action"] for e in denied} >= {
            "group.connection_settings.put",
            "agent.certificate.rotate",
        }
        assert all(e["outcome"] == "denied" for e in denied)
        # Rotation needs an admin; without an agent CA an admin gets a 409.
        r = await api.post(f"/api/agents/{agent_id}/rotate-certificate")
        assert r.status_code == 403 and "needs 'admin'" in r.text
        async with api_client(server, role="admin") as admin:
            r = await admin.post(f"/api/agents/{agent_id}/rotate-certificate")
            assert r.status_code == 409 and r.json()["error"]["code"] == "agent_ca_not_configured"
