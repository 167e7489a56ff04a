"""Upgrades. A database written by the oldest release (run from its own source, with real
agents) is served by this one with its agents and history intact. A database as the release
before migration 0013 left it is served whole: an agent that had reported APPLIED takes its
stored effective config as the one it applied (not drifted), its history answers availability,
and it can be forgotten."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.protocol.codec import format_instance_uid
from tests.conftest import free_port
from tests.helpers.agents import description, new_uid, open_ws_agent
from tests.helpers.config_api import api_client, wait_known
from tests.helpers.migrations import migrate_before
from tests.helpers.process import unmeasured

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


#: The oldest release that stores agents and their connection history (the first with the
#: transports and the batch writer); it runs from its own source with this environment's
#: packages, the pure-Python timing wheel standing in for its extension.
OLDEST_RELEASE = "3075e33"
ROOT = Path(__file__).resolve().parents[2]


def unpack_release(commit: str, into: Path) -> Path:
    if not (ROOT / ".git").exists():
        pytest.fail("needs the repository's history (a git checkout) to run the oldest release")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def spawn_release(src: Path, database_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The release in ``src`` as a server process (this interpreter, its packages)."""
    # Not measured: the old release is not the code under test, and its files would enter the
    # coverage report as files of their own.
    env = {**unmeasured(os.environ), "PYTHONPATH": str(src)}
    args = [sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1", "--port",
            str(port), "--database-url", database_url, "--instance-id", "old-release",
            "--flush-interval-s", "0.1"]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=src.parent, stdout=out, stderr=out)


def tail(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Its log's end, once it exited (to say why it did not come up)."""
    return "" if proc.poll() is None else log.read_text()[-2000:]


@contextlib.asynccontextmanager
async def old_server(src: Path, database_url: str, log: Path) -> AsyncIterator[str]:
    """The oldest release serving on a port of its own, on ``database_url``; stopped (SIGTERM,
    its graceful shutdown) when the block ends."""
    port = free_port()
    proc = spawn_release(src, database_url, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            with anyio.fail_after(30):
                while (await _status(client, "/readyz")) != 200:
                    assert not tail(proc, log), tail(proc, log)
                    await anyio.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: proc.wait(20))


def applied_migrations(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    return [r[0] for r in rows]


async def _status(client: httpx.AsyncClient, path: str) -> int:
    try:
        return (await client.get(path)).status_code
    except httpx.TransportError:
        return 0


async def test_a_database_written_by_the_oldest_release_is_served_with_its_agents(
    start_server: Any, make_settings: Any, database_url: str, tmp_path: Path
) -> None:
    """Real agents talk to the oldest release (one leaves, one stays until it stops); the
    current server then migrates that database and serves both agents, their history and
    its availability, and takes the agents back as known ones."""
    src = await anyio.to_thread.run_sync(unpack_release, OLDEST_RELEASE, tmp_path)
    started = datetime.now(UTC)
    async with old_server(src, database_url, tmp_path / "old.log") as url:
        async with open_ws_agent(url) as leaver:
            await leaver.request(leaver.message(agent_description=description("leaver")))
        stayer_cm = open_ws_agent(url)
        stayer = await stayer_cm.__aenter__()
        await stayer.request(stayer.message(agent_description=description("stayer")))
        await anyio.sleep(0.5)  # a few flushes of its writer
        with contextlib.suppress(Exception):
            await stayer_cm.__aexit__(None, None, None)
    stopped = datetime.now(UTC)
    versions = await anyio.to_thread.run_sync(lambda: applied_migrations(database_url))
    assert versions == [1, 2]  # what that release knew

    server = await start_server(make_settings())  # applies every later migration, then serves
    async with api_client(server, role="viewer") as api:
        summary = (await api.get("/api/agents/status/summary")).json()
        assert (summary["total"], summary["online"]) == (2, 0)
        listed = (await api.get("/api/agents")).json()["agents"]
        assert {a["name"] for a in listed} == {"leaver", "stayer"}
        for agent in (leaver, stayer):
            path = f"/api/agents/{format_instance_uid(agent.uid)}"
            history = (await api.get(path + "/connection-history")).json()["histories"]
            assert len(history) == 1 and history[0]["disconnected_at"] is not None
            assert history[0]["serving_instance"] == "old-release"
            report = (await api.get(path + "/availability", params={
                "since": started.isoformat(), "until": stopped.isoformat()})).json()  # fmt: skip
            assert report["sessions"] == 1 and report["disconnects"] == 1
            assert 0 < report["online_seconds"] <= (stopped - started).total_seconds()
    # An agent of the old release comes back: the same row, a second session.
    async with (
        open_ws_agent(server.url, leaver.uid) as again,
        api_client(server, role="viewer") as api,
    ):
        await again.request(again.message(agent_description=description("leaver")))
        await wait_known(api, leaver.uid)
        await server.services.writer.flush()
        path = f"/api/agents/{format_instance_uid(leaver.uid)}"
        assert (await api.get(path)).json()["status"] == "online"
        assert (await api.get(path + "/connection-history")).json()["total"] == 2
        assert (await api.get("/api/agents/status/summary")).json()["total"] == 2
