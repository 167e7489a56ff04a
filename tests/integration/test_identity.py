"""Identity: a uid is not a credential. Duplicates never touch the owner's state; an
agent that changes its uid on a live socket is re-keyed, not dropped later; per-agent tokens and
client certificates bind a connection to one uid."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.auth import agent_token_key, load_key_material, mint_agent_token, mint_token
from opamp_fast.protocol import pb
from tests.helpers.agents import (
    HTTPAgent,
    WSAgent,
    description,
    new_uid,
    open_ws_agent,
    ws_url,
)
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.helpers.certs import make_ca
from tests.helpers.wsclient import ConnectionClosed, ConnectionRejected, open_ws

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REQUEST_INSTANCE_UID = 0x1  # AgentToServerFlags_RequestInstanceUid


def history(database_url: str, uid: bytes) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT transport, disconnect_reason FROM agent_connection_history"
            " WHERE instance_uid = %s ORDER BY id",
            (uid,),
        ).fetchall()


def agent_token(settings: Any, uid: bytes) -> str:
    key = agent_token_key(settings)
    assert key is not None
    return mint_agent_token(key, instance_uid=str(uuid.UUID(bytes=uid)), ttl_s=3600)


async def test_http_post_for_a_live_websocket_uid_is_a_duplicate(server: Any, database_url: str):
    registry = server.services.registry
    async with open_ws_agent(server.url) as owner:
        await owner.full_state("the-owner")
        record = registry.get(owner.uid)
        async with httpx.AsyncClient(base_url=server.url) as http:
            intruder = HTTPAgent(http, owner.uid)
            reply = await intruder.request(
                intruder.message(agent_description=description("an-impostor"))
            )
            assert len(reply.agent_identification.new_instance_uid) == 16
            bye = await intruder.request(intruder.message(agent_disconnect=pb.AgentDisconnect()))
            assert bye.instance_uid == owner.uid
        # The owner is untouched: still online on its socket, its description its own.
        assert record.online and record.connection is not None
        name = record.state.description.identifying_attributes[0].value.string_value
        assert name == "the-owner"
        assert (await owner.heartbeat()).instance_uid == owner.uid
        await server.services.writer.flush()
        assert history(database_url, owner.uid) == [("ws", None)]  # one row, still open


async def test_clone_newcomer_never_merges_into_the_original(server: Any, database_url: str):
    registry = server.services.registry
    uid = new_uid()
    async with open_ws_agent(server.url, uid) as first:
        await first.full_state("original")
        async with open_ws_agent(server.url, uid) as second:
            await second.full_state("original")  # a reconnect: takes over, first gets 4000
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await first.ws.get_message()
            assert info.value.reason.code == 4000
            record = registry.get(uid)
            async with open_ws_agent(server.url, uid) as clone:
                reply = await clone.full_state("the-clone")
                new = reply.agent_identification.new_instance_uid
                assert len(new) == 16 and new != uid
                # The original's merged state and connection are untouched.
                name = record.state.description.identifying_attributes[0].value.string_value
                assert name == "original" and record.online
                # The clone adopts its new uid on the same socket and becomes its own agent.
                clone.uid = new
                adopted = await clone.full_state("the-clone")
                assert adopted.instance_uid == new and registry.get(new).online
    await server.services.writer.flush()
    rows = history(database_url, uid)
    assert [reason for _, reason in rows] == ["superseded by a new connection", "connection closed"]


async def test_uid_change_on_a_live_websocket_rekeys_the_connection(
    start_server: Any, make_settings: Any, database_url: str
) -> None:
    running = await start_server(
        make_settings(heartbeat_interval_s=1, heartbeat_timeout_s=2.0, heartbeat_tick_s=0.1)
    )
    registry = running.services.registry
    async with open_ws_agent(running.url) as agent:
        old = agent.uid
        reply = await agent.request(
            agent.message(agent_description=description(), flags=REQUEST_INSTANCE_UID)
        )
        new = reply.agent_identification.new_instance_uid
        assert len(new) == 16
        agent.uid = new
        await agent.full_state()
        assert not registry.get(old).online
        assert registry.get(old).disconnect_reason == "instance uid changed"
        assert registry.get(new).online
        # Past the old record's timeout the socket lives on: nothing closes it with 4001.
        for _ in range(6):
            await anyio.sleep(0.5)
            assert (await agent.heartbeat()).instance_uid == new
    await running.services.writer.flush()
    assert history(database_url, old) == [("ws", "instance uid changed")]


async def test_agent_tokens_bind_a_connection_to_its_uid(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(require_agent_identity=True))
    settings = running.services.settings
    url = running.url.replace("http://", "ws://") + "/v1/opamp"
    mine, other = new_uid(), new_uid()
    bearer = [("Authorization", f"Bearer {agent_token(settings, mine)}")]
    # Without bound credentials: refused. A REST API token is not an agent token either.
    rest = mint_token(load_key_material(settings), subject="ops", ttl_s=60)
    for headers in ([], [("Authorization", f"Bearer {rest}")]):
        with pytest.raises(ConnectionRejected) as info:
            async with open_ws(url, extra_headers=headers):
                pass
        assert info.value.status_code == 401
    async with open_ws(url, extra_headers=bearer) as ws:
        agent = WSAgent(ws, mine)
        assert (await agent.full_state()).instance_uid == mine
        # Speaking for another uid is refused; the connection and the agent stay.
        impostor = WSAgent(ws, other)
        refused = await impostor.full_state()
        assert refused.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert "bound to instance uid" in refused.error_response.error_message
        assert running.services.registry.get(other) is None
        # A second connection with the same credentials is the same agent: it takes over,
        # however soon (a clone heuristic never applies to a proven identity).
        async with open_ws(url, extra_headers=bearer) as ws2:
            again = WSAgent(ws2, mine)
            assert not (await again.full_state()).HasField("agent_identification")
            async with open_ws(url, extra_headers=bearer) as ws3:
                third = WSAgent(ws3, mine)
                assert not (await third.full_state()).HasField("agent_identification")
    # The token is useless on the REST API.
    async with httpx.AsyncClient(base_url=running.url) as http:
        denied = await http.get("/api/agents", headers={"Authorization": bearer[0][1]})
        assert denied.status_code == 401


async def test_client_certificate_naming_the_uid_binds_the_connection(
    start_server: Any, make_settings: Any, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "pki")
    server_cert = ca.issue("server", server=True)
    uid = new_uid()
    named = ca.issue(str(uuid.UUID(bytes=uid)), server=False)
    running = await start_server(
        make_settings(
            tls_cert_file=server_cert.cert,
            tls_key_file=server_cert.key,
            tls_client_ca_file=ca.cert,
            require_agent_identity=True,
        )
    )
    url = running.url.replace("https://", "wss://") + "/v1/opamp"
    async with open_ws(url, ssl_context=ca.client_context(named)) as ws:
        assert (await WSAgent(ws, uid).full_state()).instance_uid == uid
        refused = await WSAgent(ws, new_uid()).full_state()
        assert refused.HasField("error_response")
    anonymous = ca.issue("not-a-uuid", server=False)
    with pytest.raises(ConnectionRejected) as info:
        async with open_ws(url, ssl_context=ca.client_context(anonymous)):
            pass
    assert info.value.status_code == 401


async def refused_claims(running: Any) -> float:
    """``opamp_fast_identity_claims_refused_total`` as the server's /metrics shows it."""
    async with httpx.AsyncClient(base_url=running.url) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("opamp_fast_identity_claims_refused_total "):
            return float(line.split()[1])
    raise AssertionError("opamp_fast_identity_claims_refused_total is not exported")


def refusal_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "proved its identity" in r.getMessage()]


async def test_an_unproven_claim_never_displaces_a_proven_websocket(
    server: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --require-agent-identity an anonymous socket claiming the uid of a connection
    that proved it is answered with a new uid, never merged; the proven agent reconnecting with
    its credentials still takes over its own old connection."""
    registry = server.services.registry
    uid = new_uid()
    bearer = [("Authorization", f"Bearer {agent_token(server.services.settings, uid)}")]
    caplog.set_level(logging.INFO, logger="opamp_fast.fleet.handler")
    async with open_ws(ws_url(server.url), extra_headers=bearer) as ws:
        owner = WSAgent(ws, uid)
        await owner.full_state("the-owner")
        record = registry.get(uid)
        async with open_ws_agent(server.url, uid) as claimant:
            for _ in range(3):  # long after any takeover: the clone heuristic does not apply
                reply = await claimant.full_state("an-impostor")
                new = reply.agent_identification.new_instance_uid
                assert len(new) == 16 and new != uid
        assert record.online and record.connection is not None
        name = record.state.description.identifying_attributes[0].value.string_value
        assert name == "the-owner"
        assert (await owner.heartbeat()).instance_uid == uid
        assert await refused_claims(server) == 3
        assert len(refusal_logs(caplog)) == 1  # once, not once per message
        # The agent itself, on a new socket with the same credentials: it takes over.
        async with open_ws(ws_url(server.url), extra_headers=bearer) as ws2:
            again = WSAgent(ws2, uid)
            assert not (await again.full_state("the-owner")).HasField("agent_identification")
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await ws.get_message()
            assert info.value.reason.code == 4000
            await server.services.writer.flush()
            assert history(database_url, uid) == [
                ("ws", "superseded by a new connection"),
                ("ws", None),
            ]


async def test_unproven_plain_http_claims_never_displace_a_proven_agent(
    server: Any, database_url: str
) -> None:
    registry = server.services.registry
    settings = server.services.settings
    async with httpx.AsyncClient(base_url=server.url) as http:
        owner = HTTPAgent(http)
        proof = {"Authorization": f"Bearer {agent_token(settings, owner.uid)}"}
        await owner.request(
            owner.message(agent_description=description("the-owner")), headers=proof
        )
        record = registry.get(owner.uid)
        impostor = HTTPAgent(http, owner.uid)
        reply = await impostor.request(
            impostor.message(agent_description=description("an-impostor"))
        )
        assert len(reply.agent_identification.new_instance_uid) == 16
        async with open_ws_agent(server.url, owner.uid) as claimant:
            reply = await claimant.full_state("an-impostor")
            assert len(reply.agent_identification.new_instance_uid) == 16
        name = record.state.description.identifying_attributes[0].value.string_value
        assert name == "the-owner" and record.online and record.connection is None
        polled = await owner.request(owner.message(), headers=proof)
        assert polled.instance_uid == owner.uid
        assert not polled.HasField("agent_identification")
        assert await refused_claims(server) == 2

        # An anonymous session is taken over by a proven poll for its uid (a new session),
        # after which anonymous polls for it are refused.
        anonymous = HTTPAgent(http)
        await anonymous.full_state("anonymous")
        proven = HTTPAgent(http, anonymous.uid)
        proof = {"Authorization": f"Bearer {agent_token(settings, anonymous.uid)}"}
        taken = await proven.request(
            proven.message(agent_description=description("proven")), headers=proof
        )
        assert not taken.HasField("agent_identification")
        refused = await anonymous.request(anonymous.message())
        assert len(refused.agent_identification.new_instance_uid) == 16
    await server.services.writer.flush()
    assert history(database_url, owner.uid) == [("http", None)]
    assert history(database_url, anonymous.uid) == [
        ("http", "superseded by a new connection"),
        ("http", None),
    ]
