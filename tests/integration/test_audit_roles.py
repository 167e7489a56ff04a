"""Roles and the audit log: viewers read and get a clear 403 (audited) on writes, the database
refuses to change audit rows, tokens minted by the CLI carry a role and are audited."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.protocol.codec import format_instance_uid
from tests.helpers.agents import open_ws_agent
from tests.helpers.config_api import api_client, create_config, files, token, wait_known

pytestmark = pytest.mark.postgres


async def sql(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    def work() -> list[tuple[Any, ...]]:
        with psycopg.connect(database_url) as conn:
            return list(conn.execute(query, args).fetchall())

    return await anyio.to_thread.run_sync(work)


async def test_viewer_reads_but_cannot_write_and_refusals_are_audited(server) -> None:
    async with (
        api_client(server, role="operator", sub="olga") as op,
        open_ws_agent(server.url) as agent,
    ):
        await agent.full_state()
        await wait_known(op, agent.uid)
        await create_config(op, "base", "a: 1\n")
        agent_id = format_instance_uid(agent.uid)
        async with api_client(server, role="viewer", sub="vic") as viewer:
            for path in (
                "/api/configs",
                "/api/configs/base",
                "/api/groups",
                f"/api/agents/{agent_id}",
            ):
                assert (await viewer.get(path)).status_code == 200, path
            writes = [
                ("POST", "/api/configs", {"name": "x", "files": files("a: 1\n")}, "config.create"),
                ("PUT", "/api/groups/g", {"selector": {}, "config": "base"}, "group.put"),
                ("PUT", f"/api/agents/{agent_id}/labels", {"labels": {"a": "b"}}, "agent.labels"),
                ("PUT", f"/api/agents/{agent_id}/config", {"config": "base"}, "agent.config"),
                ("DELETE", "/api/configs/base", None, "config.delete"),
                ("POST", "/api/groups/g/rollback", None, "group.rollback"),
                ("POST", f"/api/agents/{agent_id}/disconnect", None, "agent.disconnect"),
            ]
            for method, path, body, action in writes:
                r = await viewer.request(method, path, json=body)
                assert r.status_code == 403, (path, r.text)
                error = r.json()["error"]
                assert error["code"] == "forbidden"
                assert f"role 'viewer' may not {action}" in error["message"]
            # The audit log itself needs an operator.
            assert (await viewer.get("/api/audit")).status_code == 403
        # An operator may not disconnect agents: that is for admins.
        r = await op.post(f"/api/agents/{agent_id}/disconnect")
        assert r.status_code == 403 and "needs 'admin'" in r.json()["error"]["message"]
        denied = (await op.get("/api/audit", params={"actor": "vic"})).json()["entries"]
        assert [e["action"] for e in reversed(denied)] == [w[3] for w in writes] + ["audit.read"]
        assert all(e["outcome"] == "denied" and e["role"] == "viewer" for e in denied)
        assert denied[-1]["after"]["needs"] == "operator" and denied[-1]["client_addr"]
        # Nothing a viewer sent changed anything.
        rows = await sql(server.services.settings.database_url, "SELECT count(*) FROM agent_groups")
        assert rows == [(0,)]
        # A token without a role claim (minted before roles existed) is an admin token.
        async with api_client(server, role=None, sub="legacy") as legacy:
            r = await legacy.post(f"/api/agents/{agent_id}/disconnect")
            assert r.status_code == 202
            entries = (await legacy.get("/api/audit", params={"actor": "legacy"})).json()["entries"]
            assert entries[0]["action"] == "agent.disconnect" and entries[0]["role"] == "admin"


async def test_unknown_role_is_refused(server) -> None:
    import jwt

    from opamp_fast.auth import load_key_material

    keys = load_key_material(server.services.settings)
    now = int(datetime.now(UTC).timestamp())
    bad = jwt.encode({"sub": "x", "exp": now + 60, "role": "root"}, keys.signing_secret, "HS256")
    async with httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/api/configs", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    assert "role 'root' is not one of viewer, operator, admin" in r.json()["error"]["message"]


async def test_audit_log_is_append_only_in_the_database(server) -> None:
    url = server.services.settings.database_url
    async with api_client(server) as api:
        await create_config(api, "c", "a: 1\n")
    for statement in (
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            await sql(url, statement)
    rows = await sql(url, "SELECT actor, action, outcome FROM audit_log")
    assert rows == [("alice", "config.create", "ok")]


async def test_audit_filters_and_keyset_pages(server) -> None:
    async with api_client(server, sub="ann") as ann, api_client(server, sub="bob") as bob:
        for i in range(5):
            await create_config(ann, f"a{i}", "x: 1\n")
            await create_config(bob, f"b{i}", "x: 1\n")
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3, "actor": "ann"}
            if cursor:
                params["cursor"] = cursor
            page = (await ann.get("/api/audit", params=params)).json()
            seen += [e["id"] for e in page["entries"]]
            assert all(e["actor"] == "ann" for e in page["entries"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 5 and seen == sorted(seen, reverse=True)
        one = (await ann.get("/api/audit", params={"target": "config:b3"})).json()["entries"]
        assert [(e["actor"], e["action"]) for e in one] == [("bob", "config.create")]
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        assert (await ann.get("/api/audit", params={"since": later})).json()["entries"] == []
        assert len((await ann.get("/api/audit", params={"until": later})).json()["entries"]) == 10
        for params in ({"since": "yesterday"}, {"limit": "0"}, {"cursor": "zzz"}):
            r = await ann.get("/api/audit", params=params)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"


def test_cli_token_role_and_audit_row(database_url: str, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_FAST_")}
    secret = "k" * 48
    base = [sys.executable, "-m", "opamp_fast", "migrate", "--database-url", database_url]
    subprocess.run(base, check=True, capture_output=True, env=env, timeout=120)
    args = [sys.executable, "-m", "opamp_fast", "token", "--subject", "ci-bot", "--role",
            "viewer", "--api-jwt-secret", secret, "--database-url", database_url]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    import jwt

    claims = jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("ci-bot", "viewer")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT action, target, after FROM audit_log").fetchall()
    assert rows == [("token.mint", "token:ci-bot", {"subject": "ci-bot", "role": "viewer",
                                                     "ttl_s": 3600})]  # fmt: skip
    bad = subprocess.run([*args[:7], "root", *args[8:]], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "invalid choice: 'root'" in bad.stderr
    _ = token  # the helper the API tests use mints the same claims


async def test_the_console_session_says_who_and_which_role(server: Any) -> None:
    """``/api/ui/me``: what the console needs to offer only what the token may do."""
    for role, expected in (("viewer", "viewer"), ("operator", "operator"), (None, "admin")):
        async with api_client(server, role=role, sub="carol") as client:
            response = await client.get("/api/ui/me")
        assert response.status_code == 200
        me = response.json()
        assert me["subject"] == "carol" and me["role"] == expected
        expires = datetime.fromisoformat(me["expires_at"].replace("Z", "+00:00"))
        assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/api/ui/me")).status_code == 401


async def test_repeated_refusals_are_counted_not_appended_one_by_one(
    start_server: Any, make_settings: Any
) -> None:
    """A viewer repeating a refused write cannot grow the audit log without limit: the first
    refusal of a window is a row at once, the repeats of that window one more row with their
    count when it closes. Every refusal is still a 403."""
    window_s = 2.0
    running = await start_server(make_settings(audit_denial_window_s=window_s))
    url = running.services.settings.database_url
    query = "SELECT action, target, after FROM audit_log WHERE actor = 'vic' ORDER BY id"
    async with api_client(running, role="viewer", sub="vic") as viewer:
        started = time.monotonic()
        assert (await viewer.put("/api/groups/g", json={"selector": {}})).status_code == 403
        first = {"needs": "operator", "method": "PUT", "path": "/api/groups/g", "count": 1}
        assert await sql(url, query) == [("group.put", "group:g", first)]  # at once
        for i in range(300):
            r = await viewer.put(f"/api/groups/g{i % 3}", json={"selector": {}})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        elapsed = time.monotonic() - started
        other = await viewer.delete("/api/configs/base")  # another action: its own first row
        assert other.status_code == 403
        assert (await sql(url, query))[-1][:2] == ("config.delete", "config:base")

        async def counted() -> list[tuple[Any, ...]]:
            rows = await sql(url, query + " LIMIT 1000")
            puts = [r for r in rows if r[0] == "group.put"]
            return puts if sum(r[2]["count"] for r in puts) == 301 else []

        puts: list[tuple[Any, ...]] = []
        with anyio.fail_after(3 * window_s + 5):  # the window closes, then its row is written
            while not puts:
                await anyio.sleep(0.1)
                puts = await counted()
    windows = int(elapsed // window_s) + 2  # the windows the burst can have touched
    assert len(puts) <= 2 * windows, puts
    summaries = [after for _, _, after in puts if after["count"] > 1]
    assert summaries and all(after["needs"] == "operator" for after in summaries)
    seen = {t for after in summaries for t in after["targets"]}
    assert seen <= {"group:g0", "group:g1", "group:g2"} and len(seen) == 3
    async with api_client(running, role="operator", sub="olga") as op:
        page = (await op.get("/api/audit", params={"actor": "vic"})).json()["entries"]
    assert sum(e["after"]["count"] for e in page if e["action"] == "group.put") == 301
    assert all(e["outcome"] == "denied" for e in page)


async def test_the_open_window_is_written_at_shutdown(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(audit_denial_window_s=3600))
    url = running.services.settings.database_url
    query = "SELECT target, after->'count' FROM audit_log WHERE actor = 'vic' ORDER BY id"
    async with api_client(running, role="viewer", sub="vic") as viewer:
        for _ in range(5):  # a name the database cannot store as text: still a 403, not a 500
            r = await viewer.post("/api/configs", json={"name": "a\x00b", "files": files("")})
            assert r.status_code == 403, r.text
    assert await sql(url, query) == [("config:a\ufffdb", 1)]
    running.services.shutdown.set()
    with anyio.fail_after(15):
        while len(rows := await sql(url, query)) < 2:
            await anyio.sleep(0.1)
    assert rows == [("config:a\ufffdb", 1), ("config:a\ufffdb", 4)]
