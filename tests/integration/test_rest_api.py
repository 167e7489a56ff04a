"""The REST status API against a live server, a real Postgres and real WS/HTTP agents."""

from __future__ import annotations

import os
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from opamp_fast.api.params import encode_agent_cursor, encode_history_cursor
from opamp_fast.auth import load_key_material, mint_token, secret_file_path
from opamp_fast.protocol import pb
from opamp_fast.protocol.codec import format_instance_uid
from opamp_fast.settings import Settings
from tests.helpers.agents import HTTPAgent, open_ws_agent, wait_for

pytestmark = pytest.mark.postgres

SECRET = "s" * 48


def token_for(settings: Settings, **claims: Any) -> str:
    keys = load_key_material(settings)
    return mint_token(
        keys,
        subject=claims.pop("sub", "tester"),
        ttl_s=claims.pop("ttl_s", 3600),
        issuer=settings.api_jwt_issuer,
        audience=settings.api_jwt_audience,
    )


@pytest.fixture
async def api(server) -> AsyncIterator[httpx.AsyncClient]:
    token = token_for(server.services.settings)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


async def run_sql(database_url: str, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
    def work() -> Any:
        with psycopg.connect(database_url) as conn:
            return fn(conn)

    return await anyio.to_thread.run_sync(work)


def insert_agents(conn: psycopg.Connection[Any], agents: list[dict[str, Any]]) -> None:
    """Rows as the writers would leave them: fleet_stats counts them, and the online ones are
    held (and published) by a running instance "seeded"."""
    online = 0
    for a in agents:
        uid = a["uid"]
        status = a.get("status", "offline")
        online += status == "online"
        conn.execute(
            """INSERT INTO agents (instance_uid, uid_text, status, agent_name, labels,
                   last_seen_at, last_disconnected_at, disconnect_reason, capabilities, transport,
                   serving_instance)
               VALUES (%s, %s, %s, %s, %s, now(), now(), 'test', %s, 'ws', %s)""",
            (
                uid,
                format_instance_uid(uid),
                status,
                a.get("name"),
                psycopg.types.json.Jsonb(a.get("labels", {})),
                a.get("capabilities", 0),
                "seeded" if status == "online" else None,
            ),
        )
    conn.execute("UPDATE fleet_stats SET agents_total = agents_total + %s", (len(agents),))
    conn.execute(
        """INSERT INTO server_instances (instance_id, version, started_at, last_heartbeat_at,
               online_ws, lease_s)
           VALUES ('seeded', 'test', now(), now(), %s, 3600)
           ON CONFLICT (instance_id) DO UPDATE SET online_ws = server_instances.online_ws + %s""",
        (online, online),
    )


def insert_history(conn: psycopg.Connection[Any], uid: bytes, times: list[datetime]) -> None:
    with conn.cursor().copy(
        "COPY agent_connection_history (session_id, instance_uid, connected_at, disconnected_at,"
        " duration_s, disconnect_reason, remote_addr, transport, serving_instance) FROM STDIN"
    ) as copy:
        for t in times:
            copy.write_row(
                (
                    uuid.uuid4(),
                    uid,
                    t,
                    t + timedelta(seconds=5),
                    5.0,
                    "seeded",
                    "10.0.0.1:1",
                    "http",
                    "seed",
                )
            )


# --------------------------------------------------------------------------------- auth


async def test_auth_rejections_say_why(server) -> None:
    settings = server.services.settings
    secret = load_key_material(settings).signing_secret
    assert secret is not None
    now = int(time.time())
    good = token_for(settings)
    cases = {
        "missing": (None, "missing"),
        "basic": ("Basic dXNlcjpwYXNz", "malformed Authorization"),
        "empty bearer": ("Bearer", "malformed Authorization"),
        "garbage": ("Bearer not.a.jwt", "malformed token"),
        "two parts": ("Bearer abc.def", "malformed token"),
        "expired": (
            "Bearer " + jwt.encode({"sub": "x", "exp": now - 10}, secret, algorithm="HS256"),
            "expired",
        ),
        "no exp": ("Bearer " + jwt.encode({"sub": "x"}, secret, algorithm="HS256"), "'exp'"),
        "alg none": (
            "Bearer " + jwt.encode({"sub": "x", "exp": now + 60}, None, algorithm="none"),
            "algorithm 'none'",
        ),
        "other hmac alg": (
            "Bearer " + jwt.encode({"sub": "x", "exp": now + 60}, secret * 2, algorithm="HS512"),
            "algorithm 'HS512'",
        ),
        "bad signature": (
            "Bearer " + jwt.encode({"sub": "x", "exp": now + 60}, "t" * 48, algorithm="HS256"),
            "bad signature",
        ),
        "tampered": ("Bearer " + good[:-4] + ("AAAA" if good[-4:] != "AAAA" else "BBBB"), ""),
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for name, (header, why) in cases.items():
            headers = {"Authorization": header} if header is not None else {}
            r = await client.get("/api/agents/status/summary", headers=headers)
            status, code, message = error_of(r)
            assert (status, code) == (401, "unauthorized"), name
            assert why in message, (name, message)
            challenge = r.headers["www-authenticate"]
            if name == "missing":
                assert challenge == "Bearer"
            else:
                assert challenge.startswith('Bearer error="invalid_token"'), name
        ok = await client.get(
            "/api/agents/status/summary", headers={"Authorization": f"Bearer {good}"}
        )
        assert ok.status_code == 200
        # Unauthenticated surfaces stay open; unknown /api paths need a token first.
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/api/nothing-here")).status_code == 401
    # The secret was generated on first use, next to the data dir, private.
    path = secret_file_path(settings)
    assert path.parent == settings.data_dir.parent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_issuer_and_audience_are_checked(start_server, make_settings) -> None:
    settings = make_settings(api_jwt_secret=SECRET, api_jwt_issuer="ops", api_jwt_audience="fleet")
    running = await start_server(settings)
    now = int(time.time())

    def sign(**claims: Any) -> str:
        return jwt.encode({"sub": "x", "exp": now + 60, **claims}, SECRET, algorithm="HS256")

    cases = [
        (sign(iss="ops", aud="fleet"), 200, ""),
        (sign(iss="ops", aud="other"), 401, "audience"),
        (sign(iss="evil", aud="fleet"), 401, "issuer"),
        (sign(iss="ops"), 401, "'aud'"),
        (sign(aud="fleet"), 401, "'iss'"),
        (token_for(settings), 200, ""),  # what `opamp-fast token` mints carries both
    ]
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        for token, expected, why in cases:
            r = await client.get("/api/agents/online", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == expected, r.text
            if expected == 401:
                assert why in r.json()["error"]["message"]


async def test_rs256_public_key_and_no_hs_confusion(start_server, make_settings, tmp_path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "api.pub.pem"
    key_file.write_bytes(public_pem)
    running = await start_server(
        make_settings(api_jwt_algorithm="RS256", api_jwt_public_key_file=key_file)
    )
    now = int(time.time())
    good = jwt.encode({"sub": "x", "exp": now + 60}, private, algorithm="RS256")
    # HS/RS confusion: an HS256 token "signed" with the public key as the HMAC secret.
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = jwt.utils.base64url_encode(f'{{"sub":"x","exp":{now + 60}}}'.encode())
    signing_input = header + b"." + payload
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    confused = (signing_input + b"." + jwt.utils.base64url_encode(mac)).decode()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_key = jwt.encode({"sub": "x", "exp": now + 60}, other, algorithm="RS256")
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:

        async def get(token: str) -> httpx.Response:
            return await client.get(
                "/api/agents/status/summary", headers={"Authorization": f"Bearer {token}"}
            )

        assert (await get(good)).status_code == 200
        r = await get(confused)
        assert error_of(r)[:2] == (401, "unauthorized")
        assert "algorithm 'HS256'" in error_of(r)[2]
        assert "bad signature" in error_of(await get(wrong_key))[2]


async def test_token_subcommand_mints_a_token_the_server_accepts(server, tmp_path) -> None:
    settings = server.services.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_FAST_")}
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "opamp_fast",
            "token",
            "--subject",
            "alice",
            "--ttl",
            "15m",
            "--data-dir",
            str(settings.data_dir),
        ],
        env=env,
    )
    token = result.stdout.decode().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert 15 * 60 - 5 <= claims["exp"] - claims["iat"] <= 15 * 60
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.get(
            "/api/agents/status/summary", headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 200, r.text

    # Only a public key configured: no way to mint, one clear line, exit 2.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "only.pub.pem"
    key_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    failed = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "opamp_fast",
            "token",
            "--subject",
            "bob",
            "--data-dir",
            str(tmp_path / "x" / "pg"),
            "--api-jwt-algorithm",
            "RS256",
            "--api-jwt-public-key-file",
            str(key_file),
        ],
        check=False,
        env=env,
    )
    assert failed.returncode == 2
    lines = failed.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opamp-fast: error: cannot mint"), lines
    assert failed.stdout == b""
    assert not (tmp_path / "x" / "jwt-secret").exists()


# --------------------------------------------------------------------------- parameters


BAD_PAGES = [
    ("limit=0", "limit"),
    ("limit=-1", "limit"),
    ("limit=1001", "limit"),
    ("limit=abc", "limit"),
    ("limit=", "limit"),
    ("limit=1e3", "limit"),
    ("limit=" + "9" * 50, "limit"),
    ("offset=-1", "offset"),
    ("offset=x", "offset"),
    ("offset=99999999999", "offset"),
    ("cursor=", "cursor"),
    ("cursor=***", "cursor"),
    ("cursor=AAAA", "cursor"),
    ("cursor=" + "A" * 300, "cursor"),
    ("cursor=WyJoIiwxLDJd&offset=3", "offset"),  # cursor and offset together
]


async def test_bad_parameters_are_400_naming_the_parameter(api, database_url) -> None:
    uid = uuid.uuid4().bytes
    await run_sql(database_url, lambda c: insert_agents(c, [{"uid": uid}]))
    agent = format_instance_uid(uid)
    lists = [
        "/api/agents/online",
        "/api/agents/offline",
        "/api/agents",
        f"/api/agents/{agent}/connection-history",
    ]
    for path in lists:
        for query, name in BAD_PAGES:
            r = await api.get(f"{path}?{query}")
            status, code, message = error_of(r)
            assert (status, code) == (400, "invalid_parameter"), (path, query, r.text)
            assert message.startswith(f"{name}:"), (path, query, message)
    # A cursor of one list is rejected by another.
    history_cursor = encode_history_cursor(datetime(2025, 1, 1, tzinfo=UTC), 2, 10)
    agent_cursor = encode_agent_cursor(str(uuid.UUID(int=0)), 10)
    r = await api.get(f"/api/agents/offline?cursor={history_cursor}")
    assert error_of(r)[1] == "invalid_parameter" and "cursor" in error_of(r)[2]
    r = await api.get(f"/api/agents/{agent}/connection-history?cursor={agent_cursor}")
    assert error_of(r)[1] == "invalid_parameter"
    assert (await api.get(f"/api/agents/offline?cursor={agent_cursor}")).status_code == 200
    for query, name in [
        ("status=sleeping", "status"),
        ("label=novalue", "label"),
        ("label=:v", "label"),
        ("q=" + "x" * 300, "q"),
        ("q=a%00b", "q"),
        ("label=k:%00", "label"),
    ]:
        status, code, message = error_of(await api.get(f"/api/agents?{query}"))
        assert (status, code) == (400, "invalid_parameter"), query
        assert message.startswith(f"{name}:"), message
    # Unknown parameters are ignored; limit at the maximum is fine.
    assert (await api.get("/api/agents?limit=1000&whatever=1&_=123")).status_code == 200


async def test_agent_ids_malformed_and_unknown(api, database_url) -> None:
    unknown = uuid.uuid4()
    for suffix in ("", "/active-connection", "/connection-history"):
        for bad in ("nope", "1234", str(unknown) + "0", "g" * 32, "%00"):
            status, code, _ = error_of(await api.get(f"/api/agents/{bad}{suffix}"))
            assert (status, code) == (400, "invalid_agent_id"), (bad, suffix)
        for good_form in (str(unknown), unknown.hex, unknown.hex.upper()):
            status, code, message = error_of(await api.get(f"/api/agents/{good_form}{suffix}"))
            assert (status, code) == (404, "agent_not_found"), (good_form, suffix)
            assert str(unknown) in message
    r = await api.post("/api/agents/status/summary")
    assert error_of(r)[:2] == (405, "method_not_allowed")
    assert error_of(await api.get("/api/agents/a/b/c"))[:2] == (404, "not_found")


# ------------------------------------------------------------------ endpoints with agents


async def test_endpoints_follow_ws_and_http_agents(server, api) -> None:
    registry = server.services.registry
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as opamp_client:
        http_agent = HTTPAgent(opamp_client)
        async with open_ws_agent(server.url) as ws1, open_ws_agent(server.url) as ws2:
            await ws1.full_state("collector-ws-1")
            await ws2.full_state("collector-ws-2")
            await http_agent.full_state("collector-http")
            ids = sorted(format_instance_uid(u) for u in (ws1.uid, ws2.uid, http_agent.uid))
            # Every answer is fleet-wide, from Postgres: within one writer flush.
            await server.services.writer.flush()

            r = await api.get("/api/agents/online")
            assert r.status_code == 200
            body = r.json()
            assert body["total"] == 3
            assert [a["id"] for a in body["agents"]] == ids
            names = {a["id"]: a["name"] for a in body["agents"]}
            assert names[format_instance_uid(http_agent.uid)] == "collector-http"
            assert {a["status"] for a in body["agents"]} == {"online"}
            assert all(parse_time(a["last_seen_at"]) for a in body["agents"])

            page = (await api.get("/api/agents/online?limit=2")).json()
            assert [a["id"] for a in page["agents"]] == ids[:2]
            rest = (await api.get(f"/api/agents/online?cursor={page['next_cursor']}")).json()
            assert [a["id"] for a in rest["agents"]] == ids[2:] and rest["next_cursor"] is None
            past = (await api.get("/api/agents/online?offset=10")).json()
            assert past["agents"] == [] and past["total"] == 3

            summary = (await api.get("/api/agents/status/summary")).json()
            assert summary["online"] == 3
            assert summary["status_counts"]["online"] == 3
            assert summary["online_by_transport"] == {"ws": 2, "http": 1}
            assert summary["total"] == summary["online"] + summary["offline"]

            conn = (await api.get(f"/api/agents/{ws1.uid.hex()}/active-connection")).json()
            assert conn["agent_id"] == format_instance_uid(ws1.uid)
            assert conn["transport"] == "ws"
            assert conn["remote_addr"].startswith("127.0.0.1")
            assert conn["serving_instance"] == "test-instance"
            assert parse_time(conn["connected_at"]) <= parse_time(conn["last_seen_at"])
            http_conn = await api.get(f"/api/agents/{http_agent.uid.hex()}/active-connection")
            assert http_conn.json()["transport"] == "http"

            detail = (await api.get(f"/api/agents/{format_instance_uid(ws1.uid)}")).json()
            assert detail["source"] == "database"
            assert detail["status"] == "online"
            assert detail["serving_instance"] == "test-instance"
            assert detail["remote_addr"].startswith("127.0.0.1")
            assert detail["name"] == "collector-ws-1"
            assert detail["description"]["identifying_attributes"] == {
                "service.name": "collector-ws-1"
            }
            assert "ReportsStatus" in detail["capabilities"]
            assert "ReportsHeartbeat" in detail["capabilities"]
            assert detail["capabilities_bits"] == ws1.caps

            # Wait until the writer stored them, then the DB-backed list sees them online.
            async def stored_online() -> int:
                return (await api.get("/api/agents?status=online")).json()["total"]

            with anyio.fail_after(5):
                while await stored_online() != 3:
                    await anyio.sleep(0.05)
            await http_agent.request(http_agent.message(agent_disconnect=pb.AgentDisconnect()))
        # Both WebSockets closed, the HTTP agent said goodbye.
        await wait_for(lambda: registry.statistics().online == 0)
        await server.services.writer.flush()

    assert (await api.get("/api/agents/online")).json() == {
        "agents": [],
        "total": 0,
        "limit": 100,
        "offset": 0,
        "next_cursor": None,
    }
    status, code, _ = error_of(await api.get(f"/api/agents/{ws2.uid.hex()}/active-connection"))
    assert (status, code) == (404, "not_connected")

    with anyio.fail_after(5):
        while True:
            offline = (await api.get("/api/agents/offline")).json()
            if offline["total"] == 3:
                break
            await anyio.sleep(0.05)
    assert [a["id"] for a in offline["agents"]] == ids
    assert all(a["status"] == "offline" and a["disconnect_reason"] for a in offline["agents"])

    summary = (await api.get("/api/agents/status/summary")).json()
    assert (summary["total"], summary["online"], summary["offline"]) == (3, 0, 3)
    assert summary["status_counts"] == {"online": 0, "offline": 3}
    assert parse_time(summary["counts_as_of"])

    for agent, transport in ((ws1, "ws"), (http_agent, "http")):
        hist = await api.get(f"/api/agents/{format_instance_uid(agent.uid)}/connection-history")
        body = hist.json()
        assert body["total"] == 1 and body["limit"] == 100 and body["offset"] == 0
        (row,) = body["histories"]
        assert row["agent_id"] == format_instance_uid(agent.uid)
        assert row["transport"] == transport
        assert row["serving_instance"] == "test-instance"
        assert row["disconnect_reason"]
        assert row["duration_seconds"] >= 0
        assert parse_time(row["connected_at"]) <= parse_time(row["disconnected_at"])
        assert row["remote_addr"].startswith("127.0.0.1")

    # Offline detail comes from the registry (still known) merged with the stored row.
    detail = (await api.get(f"/api/agents/{ws2.uid.hex()}")).json()
    assert detail["status"] == "offline" and detail["disconnect_reason"] == "connection closed"
    assert detail["created_at"] is not None


async def test_detail_from_database_only(api, database_url) -> None:
    uid = uuid.uuid4().bytes
    await run_sql(
        database_url,
        lambda c: insert_agents(
            c, [{"uid": uid, "name": "old", "labels": {"env": "prod"}, "capabilities": -1}]
        ),
    )
    body = (await api.get(f"/api/agents/{uid.hex()}")).json()
    assert body["source"] == "database"
    assert body["labels"] == {"env": "prod"}
    assert body["capabilities_bits"] == 2**64 - 1
    assert body["capabilities"][:2] == ["ReportsStatus", "AcceptsRemoteConfig"]
    assert body["capabilities"][-1] == "0x8000000000000000"
    status, code, _ = error_of(await api.get(f"/api/agents/{uid.hex()}/active-connection"))
    assert (status, code) == (404, "not_connected")
    hist = (await api.get(f"/api/agents/{uid.hex()}/connection-history")).json()
    assert hist["histories"] == [] and hist["total"] == 0


# ------------------------------------------------------------------------ pagination walks


async def test_history_cursor_walk_covers_every_row_once(api, database_url) -> None:
    uid = uuid.uuid4().bytes
    other = uuid.uuid4().bytes
    base = datetime(2025, 1, 1, tzinfo=UTC)
    # 3 rows per timestamp: the id breaks ties, so keyset paging must use (connected_at, id).
    times = [base + timedelta(minutes=i // 3) for i in range(250)]

    def seed(conn: psycopg.Connection[Any]) -> list[int]:
        insert_agents(conn, [{"uid": uid}, {"uid": other}])
        insert_history(conn, uid, times)
        insert_history(conn, other, times[:10])
        rows = conn.execute(
            "SELECT id FROM agent_connection_history WHERE instance_uid = %s"
            " ORDER BY connected_at DESC, id DESC",
            (uid,),
        ).fetchall()
        return [r[0] for r in rows]

    expected = await run_sql(database_url, seed)
    path = f"/api/agents/{format_instance_uid(uid)}/connection-history"
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        r = await api.get(path, params={"limit": 7, **({"cursor": cursor} if cursor else {})})
        body = r.json()
        assert body["total"] == 250 and body["limit"] == 7
        seen += [h["id"] for h in body["histories"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected  # every row exactly once, newest first
    assert pages == 36
    # limit/offset pages agree with the keyset order.
    r = (await api.get(path, params={"limit": 10, "offset": 20})).json()
    assert [h["id"] for h in r["histories"]] == expected[20:30]
    assert r["offset"] == 20
    # Offset past the end: an empty page with the right total.
    r = (await api.get(path, params={"offset": 5000})).json()
    assert r["histories"] == [] and r["total"] == 250 and r["next_cursor"] is None
    times_desc = [parse_time(h["connected_at"]) for h in (await api.get(path)).json()["histories"]]
    assert times_desc == sorted(times_desc, reverse=True)
    # A walk keeps the total of its first page and never sees rows added at the head meanwhile.
    first = (await api.get(path, params={"limit": 100})).json()
    newer = [datetime.now(UTC) + timedelta(seconds=i) for i in range(3)]
    await run_sql(database_url, lambda c: insert_history(c, uid, newer))
    second = (await api.get(path, params={"limit": 100, "cursor": first["next_cursor"]})).json()
    assert second["total"] == 250
    assert [h["id"] for h in second["histories"]] == expected[100:200]
    assert (await api.get(path)).json()["total"] == 253


async def test_offline_and_filtered_lists(api, database_url) -> None:
    offline = [uuid.uuid4().bytes for _ in range(53)]
    rows = [
        {"uid": u, "name": f"Collector-{i}", "labels": {"env": "prod" if i % 2 else "dev"}}
        for i, u in enumerate(offline)
    ]
    online_rows = [
        {
            "uid": uuid.uuid4().bytes,
            "status": "online",
            "name": "edge_1%",
            "labels": {"env": "prod"},
        }
        for _ in range(4)
    ]
    await run_sql(database_url, lambda c: insert_agents(c, rows + online_rows))
    ids = sorted(format_instance_uid(u) for u in offline)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        body = (await api.get("/api/agents/offline", params=params)).json()
        assert body["total"] == 53
        seen += [a["id"] for a in body["agents"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    body = (await api.get("/api/agents/offline", params={"offset": 50})).json()
    assert [a["id"] for a in body["agents"]] == ids[50:]
    body = (await api.get("/api/agents/offline", params={"offset": 53})).json()
    assert body["agents"] == [] and body["total"] == 53

    async def total(**params: Any) -> int:
        r = await api.get("/api/agents", params=params)
        assert r.status_code == 200, r.text
        return int(r.json()["total"])

    assert await total() == 57
    assert await total(status="online") == 4
    assert await total(status="offline") == 53
    assert await total(q="collector-1") == 11  # 1, 10..19: case-insensitive prefix
    assert await total(q="COLLECTOR-1") == 11
    assert await total(q="edge_1%") == 4  # LIKE metacharacters are literal
    assert await total(q="edge_1_") == 0
    assert await total(q="edgex") == 0
    assert await total(label="env:prod") == 26 + 4
    assert await total(label="env:prod", status="offline") == 26
    assert await total(label=["env:prod", "env:dev"]) == 0
    assert await total(label="env:prod", q="collector-1") == 6  # 1, 11, 13, 15, 17, 19
    body = (await api.get("/api/agents", params={"label": "env:dev", "limit": 5})).json()
    assert body["total"] == 27 and len(body["agents"]) == 5
    walked = [a["id"] for a in body["agents"]]
    while body["next_cursor"]:
        body = (
            await api.get(
                "/api/agents",
                params={"label": "env:dev", "limit": 5, "cursor": body["next_cursor"]},
            )
        ).json()
        walked += [a["id"] for a in body["agents"]]
    assert walked == sorted(format_instance_uid(u) for i, u in enumerate(offline) if i % 2 == 0)


async def test_unreachable_database_is_503_not_500(server, api, database_url, postgres_admin_url):
    from urllib.parse import urlsplit

    dbname = urlsplit(database_url).path.lstrip("/")

    def block(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )

    def unblock(conn: psycopg.Connection[Any]) -> None:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')

    def admin(fn: Callable[[psycopg.Connection[Any]], None]) -> Callable[[], None]:
        def work() -> None:
            with psycopg.connect(postgres_admin_url, autocommit=True) as c:
                fn(c)

        return work

    before = (await api.get("/api/agents/status/summary")).json()
    await anyio.to_thread.run_sync(admin(block))
    try:
        r = await api.get("/api/agents/offline", timeout=30)
        status, code, _ = error_of(r)
        assert (status, code) == (503, "database_unavailable")
        # The summary still answers, with the last counts it read and their time.
        during = await api.get("/api/agents/status/summary", timeout=30)
        assert during.status_code == 200 and during.json() == before
    finally:
        await anyio.to_thread.run_sync(admin(unblock))


def test_paths_are_plain(tmp_path: Path) -> None:
    # Guard for the fixture layout the auth tests rely on: data_dir's parent is the tmp dir.
    assert secret_file_path(Settings(data_dir=tmp_path / "pg")) == tmp_path / "jwt-secret"
