"""Secrets in the configs agents report never reach Postgres, the REST API, the event stream or
the logs; a hash of what was reported stays. Remote configs operators upload stay as given, and
out of the logs too. Real server, Postgres, WebSocket agents and the official Python client."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import anyio
import psycopg
import pytest

from opamp_fast.protocol import format_instance_uid, pb, remote_config_hash
from opamp_fast.storage.migrations import migrate_sync
from tests.helpers.agents import description, new_uid, open_ws_agent, wait_for
from tests.helpers.config_api import agent_detail, api_client, create_config, wait_known
from tests.helpers.migrations import migrate_before
from tests.integration.test_events import events, subscribed
from tests.integration.test_python_client_interop import (
    Callbacks,
    in_thread,
    make_agent,
    make_client,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

COLLECTOR = b"""\
exporters:
  otlphttp:
    endpoint: https://ingest:S3CR3T-url@otlp.example.com
    headers:
      api-key: S3CR3T-header
      X-Tenant: tenant-1
  datadog:
    api:
      key: ${env:DD_API_KEY}
extensions:
  oauth2client:
    client_secret: S3CR3T-client
service:
  extensions: [oauth2client]
"""
SDK = json.dumps({"exporter": {"endpoint": "http://c:4318", "token": "S3CR3T-json"}}).encode()
BLOB = b"\x00\x01S3CR3T-binary"


def effective(files: dict[str, tuple[bytes, str]]) -> pb.EffectiveConfig:
    config = pb.EffectiveConfig()
    for name, (body, content_type) in files.items():
        entry = config.config_map.config_map[name]
        entry.body = body
        entry.content_type = content_type
    return config


def stored_config(database_url: str, uid: bytes) -> tuple[str, dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT effective_config::text, effective_config FROM agents WHERE instance_uid = %s",
            (uid,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def no_secret_in_logs(caplog: pytest.LogCaptureFixture, marker: str) -> None:
    for record in caplog.records:
        assert marker not in record.getMessage(), record.getMessage()
        assert marker not in repr(record.args)


async def test_reported_secrets_are_redacted_wherever_the_config_is_shown(
    server: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    uid = new_uid()
    agent_id = format_instance_uid(uid)
    files = {
        "collector.yaml": (COLLECTOR, "text/yaml"),
        "sdk.json": (SDK, "application/json"),
        "blob.bin": (BLOB, "application/octet-stream"),
    }
    async with events(server, f"?agent={agent_id}") as stream:
        await subscribed(server)
        async with open_ws_agent(server.url, uid) as agent:
            await agent.request(
                agent.message(
                    agent_description=description("collector"), effective_config=effective(files)
                )
            )
            rotated = COLLECTOR.replace(b"S3CR3T-header", b"S3CR3T-rotated")
            files["collector.yaml"] = (rotated, "text/yaml")
            await agent.request(agent.message(effective_config=effective(files)))
            seen = [await stream.next()]
            while "effective_config" not in seen[-1].data["data"].get("changed", ()):
                seen.append(await stream.next())
            await server.services.writer.flush()
    assert seen[0].event == "agent.connected"
    assert "S3CR3T" not in json.dumps([e.data for e in seen])

    text, config = stored_config(database_url, uid)
    assert "S3CR3T" not in text
    shown = config["config_map"]
    yaml_file = shown["collector.yaml"]
    assert yaml_file["sha256"] == hashlib.sha256(rotated).hexdigest()  # what was reported
    assert yaml_file["size"] == len(rotated) and yaml_file["redacted"] == 3
    assert "      X-Tenant: tenant-1\n" in yaml_file["body"]
    assert "      key: ${env:DD_API_KEY}\n" in yaml_file["body"]
    assert "    client_secret: <redacted>\n" in yaml_file["body"]
    assert json.loads(shown["sdk.json"]["body"])["exporter"] == {
        "endpoint": "http://c:4318",
        "token": "<redacted>",
    }
    assert "body" not in shown["blob.bin"] and shown["blob.bin"]["withheld"].startswith("binary")
    assert config["sha256"] == remote_config_hash(files).hex()

    async with api_client(server, role="viewer") as api:
        response = await api.get(f"/api/agents/{agent_id}")
    assert response.status_code == 200 and "S3CR3T" not in response.text
    assert response.json()["effective_config"] == config
    no_secret_in_logs(caplog, "S3CR3T")


async def test_operator_configs_stay_as_given_and_out_of_the_logs(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator uploads is delivered and shown unchanged; the same text, reported back
    by the agent as its effective config, is redacted; neither reaches a log line."""
    caplog.set_level(logging.DEBUG)
    body = "receivers: {}\nexporters:\n  otlp:\n    headers:\n      authorization: OPS3CR3T\n"
    async with api_client(server) as api:
        version = await create_config(api, "with-secret", body)
        async with open_ws_agent(server.url) as agent:
            await agent.full_state("collector")
            await wait_known(api, agent.uid)
            r = await api.put(
                f"/api/agents/{format_instance_uid(agent.uid)}/config",
                json={"config": "with-secret"},
            )
            assert r.status_code == 200, r.text
            offered = await agent.ws.get_message()
            remote = pb.ServerToAgent.FromString(offered[1:]).remote_config  # type: ignore[index]
            delivered = remote.config.config_map["collector.yaml"].body.decode()
            assert delivered == body
            status = pb.RemoteConfigStatus(last_remote_config_hash=remote.config_hash, status=1)
            await agent.request(
                agent.message(
                    remote_config_status=status,
                    effective_config=effective({"collector.yaml": (body.encode(), "text/yaml")}),
                )
            )
            await server.services.writer.flush()
            detail = await agent_detail(api, agent.uid)
        shown = detail["effective_config"]["config_map"]["collector.yaml"]["body"]
        assert "OPS3CR3T" not in shown and "authorization: <redacted>" in shown
        again = await api.get(f"/api/configs/with-secret/versions/{version['version']}")
        assert again.json()["files"]["collector.yaml"]["body"] == body
    no_secret_in_logs(caplog, "OPS3CR3T")


async def test_the_secret_words_are_the_operators(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    """--redact-keys replaces the word list; the official Python client reports a JSON config."""
    running = await start_server(make_settings(redact_keys="sessionid,password"))
    client = make_client(running.url)
    client.update_effective_config(
        {"app": {"session_id": "S3CR3T-session", "token": "not-a-secret-here", "port": 8080}},
        content_type="application/json",
    )
    agent = make_agent(client, Callbacks())
    await in_thread(agent.start)
    try:
        uid = client._instance_uid  # the uid the client chose
        await wait_for(lambda: running.services.registry.get(uid) is not None)
        await running.services.writer.flush()
    finally:
        await in_thread(agent.stop)
    text, config = stored_config(database_url, uid)
    assert "S3CR3T" not in text
    assert json.loads(config["config_map"]["app"]["body"]) == {
        "session_id": "<redacted>",
        "token": "not-a-secret-here",
        "port": 8080,
    }


async def test_rows_stored_by_an_earlier_release_are_withheld_by_the_migration(
    database_url: str,
) -> None:
    """Migration 0010: bodies stored in clear by an earlier release give way to their hash."""
    files = {"c.yaml": (b"token: S3CR3T-old\n", "text/yaml"), "b.bin": (b"\xff\x00", "")}
    old = {
        "config_map": {
            "c.yaml": {"body": "token: S3CR3T-old\n", "content_type": "text/yaml"},
            "b.bin": {"body": "/wA=", "encoding": "base64", "content_type": ""},
        }
    }
    uid = new_uid()

    def work() -> tuple[str, dict[str, Any]]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            migrate_before(conn, 10)
            conn.execute(
                "INSERT INTO agents (instance_uid, uid_text, status, effective_config)"
                " VALUES (%s, %s, 'offline', %s)",
                (uid, format_instance_uid(uid), json.dumps(old)),
            )
            migrate_sync(conn)
        return stored_config(database_url, uid)

    text, config = await anyio.to_thread.run_sync(work)
    assert "S3CR3T" not in text
    assert config["sha256"] == remote_config_hash(files).hex()
    for name, (body, content_type) in files.items():
        entry = config["config_map"][name]
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["size"] == len(body) and entry["content_type"] == content_type
        assert "body" not in entry and entry["withheld"].startswith("stored by an earlier release")
