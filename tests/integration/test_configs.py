"""Configs, labels, groups, pins and delivery, end to end: real Postgres, real WebSocket and
plain-HTTP agents over loopback, and the official Python client ``opentelemetry-opamp-client``."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from opentelemetry._opamp import OpAMPAgent, OpAMPCallbacks, OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as client_pb

from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import HTTPAgent, description, open_ws_agent, wait_for
from tests.helpers.config_api import (
    agent_detail,
    api_client,
    create_config,
    files,
    wait_known,
    wait_remote_status,
)

pytestmark = pytest.mark.postgres


def rcs(config_hash: bytes, status: int, error: str = "") -> pb.RemoteConfigStatus:
    return pb.RemoteConfigStatus(
        last_remote_config_hash=config_hash, status=status, error_message=error
    )  # type: ignore[arg-type]


async def snapshot(database_url: str) -> tuple[Any, ...]:
    """Everything a refused request must leave untouched."""

    def work() -> tuple[Any, ...]:
        with psycopg.connect(database_url) as conn:
            return tuple(
                conn.execute(sql).fetchall()
                for sql in (
                    "SELECT name, version, config_hash FROM config_versions ORDER BY 1, 2",
                    "SELECT name, selector, config_name, config_version FROM agent_groups",
                    "SELECT * FROM agent_config_pins",
                    "SELECT instance_uid, labels FROM agents ORDER BY 1",
                    "SELECT count(*) FROM audit_log WHERE outcome = 'ok'",
                )
            )

    return await anyio.to_thread.run_sync(work)


async def test_versions_are_immutable_hashed_and_deduplicated(server) -> None:
    async with api_client(server) as api:
        r = await api.post("/api/configs", json={"name": "edge", "files": files("a: 1\n")})
        assert r.status_code == 201, r.text
        first = r.json()["version"]
        assert first["version"] == 1 and len(first["hash"]) == 64
        assert first["files"] == {"collector.yaml": {"body": "a: 1\n", "content_type": "text/yaml"}}
        again = await api.post("/api/configs", json={"name": "edge", "files": files("a: 1\n")})
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["version"]["version"] == 1
        second = await create_config(api, "edge", "a: 2\n")
        assert second["version"] == 2 and second["hash"] != first["hash"]
        listed = (await api.get("/api/configs/edge")).json()
        assert [v["version"] for v in listed["versions"]] == [2, 1]
        one = (await api.get("/api/configs/edge/versions/1")).json()
        assert one["files"]["collector.yaml"]["body"] == "a: 1\n"
        assert one["hash"] == first["hash"]
        names = [c["name"] for c in (await api.get("/api/configs")).json()["configs"]]
        assert names == ["edge"]
        # The same files under another name hash alike, and are a separate config.
        other = await create_config(api, "edge2", "a: 1\n")
        assert other["hash"] == first["hash"] and other["version"] == 1
        # Deletion only when unused.
        r = await api.put("/api/groups/g", json={"selector": {}, "config": "edge", "version": 1})
        assert r.status_code == 200, r.text
        r = await api.delete("/api/configs/edge")
        assert r.status_code == 409 and r.json()["error"]["code"] == "config_in_use"
        assert "group g" in r.json()["error"]["message"]
        assert (await api.delete("/api/groups/g")).status_code == 200
        r = await api.delete("/api/configs/edge")
        assert r.status_code == 200 and r.json()["deleted_versions"] == 2
        assert (await api.get("/api/configs/edge")).status_code == 404


async def test_bad_input_is_a_json_error_and_changes_nothing(server) -> None:
    settings = server.services.settings
    big = "x" * (settings.max_message_bytes + 1)
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        await agent.full_state()
        await wait_known(api, agent.uid)
        await create_config(api, "ok", "a: 1\n")
        agent_id = format_instance_uid(agent.uid)
        before = await snapshot(settings.database_url)
        bad = "invalid_body"
        cases: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/api/configs", {"name": "bad name!", "files": files("a")}, 400, bad),
            ("POST", "/api/configs", {"name": "n", "files": {}}, 400, bad),
            ("POST", "/api/configs", {"name": "n", "files": {"f": {"body": 5}}}, 400, bad),
            ("POST", "/api/configs", {"name": "n", "files": files("a"), "x": 1}, 400, bad),
            ("POST", "/api/configs", [1, 2], 400, bad),
            ("POST", "/api/configs", {"name": "n", "files": files(big)}, 413, "too_large"),
            ("PUT", "/api/groups/g", {"selector": {"env": 1}, "config": "ok"}, 400, bad),
            ("PUT", "/api/groups/g", {"selector": "env=prod"}, 400, bad),
            ("PUT", "/api/groups/g", {"selector": {}, "config": "nope"}, 404, "config_not_found"),
            ("PUT", "/api/groups/g", {"selector": {}, "config": "ok", "version": 9}, 404,
             "config_not_found"),
            ("PUT", "/api/groups/g", {"selector": {}, "config": "ok", "version": "1"}, 400,
             "invalid_body"),
            ("PUT", "/api/groups/g", {"selector": {}, "config": "ok",
                                      "rollout": {"batch_percent": 0}}, 400, bad),
            ("PUT", "/api/groups/bad%20name", {"selector": {}}, 400, bad),
            ("PUT", f"/api/agents/{agent_id}/labels", {"labels": {"env": ["prod"]}}, 400,
             "invalid_body"),
            ("PUT", f"/api/agents/{agent_id}/labels", {"labels": "env"}, 400, bad),
            ("PUT", f"/api/agents/{agent_id}/config", {"config": "nope"}, 404, "config_not_found"),
            ("PUT", f"/api/agents/{agent_id}/config", {"version": 1}, 400, bad),
            ("PUT", f"/api/agents/{format_instance_uid(b'1' * 16)}/labels", {"labels": {}}, 404,
             "agent_not_found"),
            ("POST", "/api/groups/none/rollback", None, 404, "group_not_found"),
            ("DELETE", "/api/configs/none", None, 404, "config_not_found"),
        ]  # fmt: skip
        for method, path, body, status, code in cases:
            r = await api.request(method, path, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert r.json()["error"]["code"] == code, (path, r.text)
            assert r.json()["error"]["message"]
        r = await api.post(
            "/api/configs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        r = await api.post("/api/configs", content=b"x" * (settings.max_message_bytes + 10))
        assert r.status_code == 413
        assert await snapshot(settings.database_url) == before


async def test_ws_agent_gets_group_config_at_once_and_status_shows(server) -> None:
    async with api_client(server) as api, open_ws_agent(server.url) as agent:
        reply = await agent.full_state("checkout")
        assert not reply.HasField("remote_config")
        await wait_known(api, agent.uid)
        version = await create_config(api, "base", "receivers: {otlp: {}}\n")
        agent_id = format_instance_uid(agent.uid)
        r = await api.put(f"/api/agents/{agent_id}/labels", json={"labels": {"env": "prod"}})
        assert r.status_code == 200 and r.json()["labels"] == {"env": "prod"}
        started = time.perf_counter()
        r = await api.put("/api/groups/prod", json={"selector": {"env": "prod"}, "config": "base"})
        assert r.status_code == 200, r.text
        push = await agent.receive(timeout=2)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.1, f"pushed {elapsed * 1000:.0f} ms after the API call"
        assert push.remote_config.config_hash.hex() == version["hash"]
        body = push.remote_config.config.config_map["collector.yaml"].body
        assert body == b"receivers: {otlp: {}}\n"
        rc = (await agent_detail(api, agent.uid))["remote_config"]
        assert (rc["name"], rc["version"], rc["source"], rc["group"]) == (
            "base",
            1,
            "group",
            "prod",
        )
        assert rc["status"] == "pending"
        await agent.request(
            agent.message(remote_config_status=rcs(push.remote_config.config_hash, 2))
        )
        rc = await wait_remote_status(api, agent.uid, "applying")
        await agent.request(
            agent.message(remote_config_status=rcs(push.remote_config.config_hash, 3, "no otlp"))
        )
        rc = await wait_remote_status(api, agent.uid, "failed")
        assert rc["error"] == "no otlp" and rc["updated_at"]
        status = (await api.get("/api/configs/base/status")).json()
        assert status["totals"]["failed"] == 1
        assert status["errors"] == [{"version": 1, "error": "no otlp", "agents": 1}]
        # Reported == desired (even FAILED): never resent on heartbeats.
        for _ in range(3):
            assert not (await agent.heartbeat()).HasField("remote_config")
        # ?label= filters the lists on the stored labels.
        listed = (await api.get("/api/agents", params={"label": "env:prod"})).json()
        assert [a["id"] for a in listed["agents"]] == [agent_id]
        assert (await api.get("/api/agents", params={"label": "env:dev"})).json()["agents"] == []


async def test_reconnect_with_an_older_hash_gets_it_again(server) -> None:
    async with api_client(server) as api:
        version = await create_config(api, "base", "a: 1\n")
        await api.put(
            "/api/groups/all", json={"selector": {"service.name": "svc-r"}, "config": "base"}
        )
        async with open_ws_agent(server.url) as agent:
            first = await agent.full_state("svc-r")
            assert first.remote_config.config_hash.hex() == version["hash"]
            uid = agent.uid
        async with open_ws_agent(server.url, uid=uid) as again:
            again.seq = 5
            reply = await again.request(
                again.message(
                    agent_description=description("svc-r"),
                    remote_config_status=rcs(b"\x01" * 32, 1),
                )
            )
            assert reply.remote_config.config_hash.hex() == version["hash"]
            # One delivery per hash on this connection.
            assert not (await again.heartbeat()).HasField("remote_config")


async def test_only_agents_that_accept_remote_config_get_it(server) -> None:
    async with api_client(server) as api, httpx.AsyncClient(base_url=server.url) as http:
        await create_config(api, "base", "a: 1\n")
        await api.put("/api/groups/all", json={"selector": {}, "config": "base"})
        refuses = HTTPAgent(http, caps=0x1)  # ReportsStatus only
        for _ in range(3):
            reply = await refuses.full_state()
            assert not reply.HasField("remote_config")
        accepts = HTTPAgent(http)
        assert (await accepts.full_state()).HasField("remote_config")


async def test_precedence_pin_then_specific_group_then_name(server) -> None:
    async with api_client(server) as api, httpx.AsyncClient(base_url=server.url) as http:
        v = {n: (await create_config(api, n, f"{n}: 1\n"))["hash"] for n in ("a", "b", "c", "d")}
        agent = HTTPAgent(http)
        msg = agent.message(agent_description=description("shop", **{"host.name": "h1"}))
        await agent.request(msg)
        await wait_known(api, agent.uid)
        agent_id = format_instance_uid(agent.uid)
        await api.put(f"/api/agents/{agent_id}/labels", json={"labels": {"env": "prod"}})

        async def effective() -> dict[str, Any]:
            return dict((await api.get(f"/api/agents/{agent_id}/config")).json()["remote_config"])

        # Same specificity (1 key): the name that sorts first wins; label and attribute alike.
        await api.put("/api/groups/zeta", json={"selector": {"env": "prod"}, "config": "b"})
        await api.put("/api/groups/alpha", json={"selector": {"host.name": "h1"}, "config": "a"})
        assert (await effective())["group"] == "alpha"
        # More keys win whatever the name.
        await api.put(
            "/api/groups/zz-specific",
            json={"selector": {"env": "prod", "service.name": "shop"}, "config": "c"},
        )
        rc = await effective()
        assert (rc["group"], rc["name"]) == ("zz-specific", "c")
        reply = await agent.request(agent.message())  # the next poll carries it
        assert reply.remote_config.config_hash.hex() == v["c"]
        # A label shadows an attribute of the same key.
        await api.put(
            f"/api/agents/{agent_id}/labels", json={"labels": {"env": "prod", "host.name": "h2"}}
        )
        assert (await effective())["group"] == "zz-specific"
        await api.delete("/api/groups/zz-specific")
        assert (await effective())["group"] == "zeta"
        # A pin beats every group; unpinning returns to the group.
        r = await api.put(f"/api/agents/{agent_id}/config", json={"config": "d"})
        assert r.status_code == 200 and r.json()["pinned"] == {"name": "d", "version": 1}
        assert (await effective())["source"] == "pin"
        reply = await agent.request(agent.message())
        assert reply.remote_config.config_hash.hex() == v["d"]
        await api.put(f"/api/agents/{agent_id}/config", json={"config": None})
        rc = await effective()
        assert (rc["source"], rc["name"]) == ("group", "b")
        # Group detail counts selector matches fleet-wide.
        zeta = (await api.get("/api/groups/zeta")).json()
        assert (zeta["members"], zeta["online_members"]) == (1, 1)
        assert zeta["config"] == {"name": "b", "version": 1}


class Applier(OpAMPCallbacks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configs: list[dict[str, Any]] = []

    def on_message(self, agent: Any, client: Any, message: Any) -> None:
        if message.remote_config is None:
            return
        with self.lock:
            self.configs.append(dict(client.decode_remote_config(message.remote_config)))
        status = client.update_remote_config_status(
            message.remote_config.config_hash, client_pb.RemoteConfigStatuses_APPLIED
        )
        if status is not None:
            agent.send(client.build_remote_config_status_response_message(status))


async def test_python_client_over_http_gets_it_on_next_poll(server) -> None:
    client = OpAMPClient(
        endpoint=server.url + "/v1/opamp",
        timeout_millis=1000,
        agent_identifying_attributes={"service.name": "py-interop"},
        agent_non_identifying_attributes={"host.name": "py-host"},
    )
    callbacks = Applier()
    agent = OpAMPAgent(interval=0.3, callbacks=callbacks, client=client, max_retries=10,
                       heartbeat_max_retries=1, initial_backoff=0.2)  # fmt: skip
    await anyio.to_thread.run_sync(agent.start)
    try:
        async with api_client(server) as api:
            await wait_known(api, client._instance_uid)
            body = json.dumps({"sampling": 0.25})
            r = await api.post(
                "/api/configs",
                json={"name": "py", "files": {"x.json": {"body": body,
                                                         "content_type": "application/json"}}},
            )  # fmt: skip
            assert r.status_code == 201
            r = await api.put("/api/groups/py", json={"selector": {"host.name": "py-host"},
                                                      "config": "py"})  # fmt: skip
            assert r.status_code == 200
            await wait_for(lambda: callbacks.configs, timeout=5)
            assert callbacks.configs[0] == {"x.json": {"sampling": 0.25}}
            rc = await wait_remote_status(api, client._instance_uid, "applied")
            assert (rc["name"], rc["version"], rc["error"]) == ("py", 1, None)
            status = (await api.get("/api/configs/py/status")).json()
            assert status["totals"]["applied"] == 1
    finally:
        agent._stop.set()
