"""A database written by the release before migration 0013 is served whole: its agents and
their history are there, an agent that had reported APPLIED takes its stored effective config as
the one it applied (not drifted), its history answers availability, and it can be forgotten."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest

from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import new_uid
from tests.helpers.config_api import api_client
from tests.helpers.migrations import migrate_before

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CONFIG_SHA = "ab" * 32
APPLIED = {"status": "APPLIED", "last_remote_config_hash": "cd" * 32, "error_message": ""}
EFFECTIVE = {
    "config_map": {"c.yaml": {"content_type": "text/yaml", "sha256": "ef" * 32, "size": 3,
                              "withheld": "stored by an earlier release"}},
    "sha256": CONFIG_SHA,
}  # fmt: skip


def write_previous_release(url: str, t0: datetime, applied: bytes, plain: bytes) -> None:
    """What the previous release left: two offline agents, one that applied a config, and
    their connection history."""
    agents = (
        "INSERT INTO agents (instance_uid, uid_text, status, agent_name, created_at,"
        " last_connected_at, last_disconnected_at, disconnect_reason, effective_config,"
        " remote_config_status, labels) VALUES (%s, %s, 'offline', %s, %s, %s, %s, %s, %s, %s, %s)"
    )
    history = (
        "INSERT INTO agent_connection_history (session_id, instance_uid, connected_at,"
        " disconnected_at, duration_s, disconnect_reason, transport, serving_instance)"
        " VALUES (gen_random_uuid(), %s, %s, %s, 3600, %s, 'ws', 'old')"
    )
    hour = timedelta(hours=1)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate_before(conn, 13)
        for uid, name, start, reason, config, status in (
            (applied, "applied", t0, "connection closed", EFFECTIVE, APPLIED),
            (plain, "plain", t0 + hour / 2, "heartbeat timeout", None, None),
        ):
            conn.execute(agents, (uid, format_instance_uid(uid), name, start, start,
                                  start + hour, reason, json.dumps(config) if config else None,
                                  json.dumps(status) if status else None,
                                  json.dumps({"env": "prod"})))  # fmt: skip
            conn.execute(history, (uid, start, start + hour, reason))
        conn.execute("UPDATE fleet_stats SET agents_total = 2")


async def test_a_database_of_the_previous_release_is_served_whole(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    applied, plain = new_uid(), new_uid()
    await anyio.to_thread.run_sync(write_previous_release, database_url, t0, applied, plain)
    server = await start_server(make_settings())  # migrates, then serves
    async with api_client(server, role="admin") as api:
        summary = (await api.get("/api/agents/status/summary")).json()
        assert (summary["total"], summary["offline"]) == (2, 2)
        listed = (await api.get("/api/agents", params={"label": "env:prod"})).json()
        assert {a["name"] for a in listed["agents"]} == {"applied", "plain"}
        detail = (await api.get(f"/api/agents/{format_instance_uid(applied)}")).json()
        assert detail["applied_config_hash"] == CONFIG_SHA and detail["drifted_at"] is None
        assert detail["effective_config"] == EFFECTIVE
        assert (await api.get("/api/agents", params={"drifted": "true"})).json()["total"] == 0
        for uid, connected in ((applied, t0), (plain, t0 + timedelta(minutes=30))):
            path = f"/api/agents/{format_instance_uid(uid)}"
            history = (await api.get(path + "/connection-history")).json()
            assert history["total"] == 1
            assert history["histories"][0]["connected_at"] == connected.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            window = {"since": (t0 - timedelta(hours=1)).isoformat()}
            report = (await api.get(path + "/availability", params=window)).json()
            assert report["online_seconds"] == 3600.0 and report["sessions"] == 1
            assert report["first_seen_at"] == history["histories"][0]["connected_at"]
        r = await api.delete(f"/api/agents/{format_instance_uid(plain)}")
        assert r.status_code == 200
        summary = (await api.get("/api/agents/status/summary")).json()
        assert (summary["total"], summary["offline"]) == (1, 1)
