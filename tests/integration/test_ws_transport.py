"""OpAMP over WebSocket against the live server: framing, errors, pushes, liveness."""

from __future__ import annotations

import anyio
import httpx
import psycopg
import pytest

from opamp_fast.protocol import pb
from tests.helpers.agents import description, new_uid, open_ws, open_ws_agent, wait_for, ws_url
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.helpers.wsclient import ConnectionClosed

pytestmark = pytest.mark.postgres

FULL_STATE = 0x1  # ServerToAgentFlags_ReportFullState


async def test_first_message_heartbeats_and_disconnect(server) -> None:
    registry = server.services.registry
    async with open_ws_agent(server.url) as agent:
        first = await agent.full_state("checkout")
        assert first.instance_uid == agent.uid
        assert first.capabilities & 0x1  # AcceptsStatus, in the first response
        assert not first.flags & FULL_STATE
        record = registry.get(agent.uid)
        assert record is not None and record.online
        for _ in range(3):
            beat = await agent.heartbeat()
            assert beat.instance_uid == agent.uid
            assert beat.capabilities == 0  # only the first response of a connection carries them
            assert not beat.flags & FULL_STATE
        bye = await agent.request(agent.message(agent_disconnect=pb.AgentDisconnect()))
        assert bye.instance_uid == agent.uid
        assert not record.online
        assert record.disconnect_reason == "agent_disconnect"


async def test_unknown_agent_heartbeat_asks_for_full_state_once(server) -> None:
    async with open_ws_agent(server.url) as agent:
        agent.seq = 7  # a reconnecting agent the server has never seen (server restarted)
        reply = await agent.heartbeat()
        assert reply.flags & FULL_STATE
        again = await agent.heartbeat()
        assert not again.flags & FULL_STATE  # never in a loop
        full = await agent.full_state()
        assert not full.flags & FULL_STATE


async def test_legacy_headerless_frames_are_accepted(server) -> None:
    async with open_ws_agent(server.url) as agent:
        await agent.send(agent.message(agent_description=description()), legacy=True)
        reply = await agent.receive()
        assert reply.instance_uid == agent.uid
        assert server.services.registry.get(agent.uid).online


async def test_text_frame_closes_with_1002(server) -> None:
    async with open_ws(ws_url(server.url)) as ws:
        await ws.send_message("hello")
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await ws.get_message()
        assert info.value.reason.code == 1002
        assert "binary" in info.value.reason.reason
    stats = server.services.opamp.stats
    assert any(kind == "text_frame" for (_, kind) in stats.errors)


async def test_non_zero_header_closes_with_1002(server) -> None:
    async with open_ws(ws_url(server.url)) as ws:
        await ws.send_message(
            b"\x01" + pb.AgentToServer(instance_uid=new_uid()).SerializeToString()
        )
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await ws.get_message()
        assert info.value.reason.code == 1002


async def test_garbage_protobuf_gets_bad_request_and_connection_survives(server) -> None:
    async with open_ws_agent(server.url) as agent:
        await agent.ws.send_message(b"\x00\xff\xff\xff\xff\x0f garbage")
        reply = await agent.receive()
        assert reply.HasField("error_response")
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert reply.error_response.error_message
        # Nothing else rides with an error response, and the socket still works.
        assert not reply.HasField("remote_config") and reply.capabilities == 0
        ok = await agent.full_state()
        assert ok.instance_uid == agent.uid


async def test_oversize_frame_closes_with_1009(start_server, make_settings) -> None:
    running = await start_server(make_settings(max_message_bytes=4096))
    async with open_ws(ws_url(running.url)) as ws:
        await ws.send_message(b"\x00" + b"\x0a" * 10_000)
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await ws.get_message()
        assert info.value.reason.code == 1009
    # The server is unaffected: a normal agent still gets served.
    async with open_ws_agent(running.url) as agent:
        assert (await agent.full_state()).instance_uid == agent.uid


async def test_remote_config_push_while_connected(server) -> None:
    fleet = server.services.fleet
    async with open_ws_agent(server.url) as agent:
        await agent.full_state()
        record = server.services.registry.get(agent.uid)
        config_hash = record.state.set_remote_config({"x.json": (b'{"a": 1}', "application/json")})
        assert fleet.push(record)
        pushed = await agent.receive()
        assert pushed.remote_config.config_hash == config_hash
        assert pushed.remote_config.config.config_map["x.json"].body == b'{"a": 1}'
        status = pb.RemoteConfigStatus(
            last_remote_config_hash=config_hash, status=pb.RemoteConfigStatuses_APPLIED
        )
        ack = await agent.request(agent.message(remote_config_status=status))
        assert not ack.HasField("remote_config")
        assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
        # Heartbeats omit the status: no resend, and nothing more to push.
        assert not (await agent.heartbeat()).HasField("remote_config")
        assert not fleet.push(record)


async def test_socket_close_marks_agent_offline_and_history_is_written(
    server, database_url
) -> None:
    async with open_ws_agent(server.url) as agent:
        await agent.full_state("payments")
        uid = agent.uid
    record = server.services.registry.get(uid)
    await wait_for(lambda: not record.online)
    assert record.disconnect_reason == "connection closed"

    def history() -> list[tuple]:
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "SELECT transport, disconnect_reason, disconnected_at IS NOT NULL "
                "FROM agent_connection_history WHERE instance_uid = %s",
                (uid,),
            ).fetchall()

    await wait_for(lambda: history() == [("ws", "connection closed", True)], timeout=10)


async def test_duplicate_uid_newer_connection_takes_over(server) -> None:
    uid = new_uid()
    async with open_ws_agent(server.url, uid) as first:
        await first.full_state()
        async with open_ws_agent(server.url, uid) as second:
            reply = await second.full_state()
            assert not reply.HasField("agent_identification")  # a reconnect, not a clone
            record = server.services.registry.get(uid)
            assert record.online
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(5):
                    await first.ws.get_message()
            assert info.value.reason.code == 4000
            # A third live connection within one heartbeat interval: two agents share the uid.
            async with open_ws_agent(server.url, uid) as third:
                clone = await third.full_state()
                assert len(clone.agent_identification.new_instance_uid) == 16
                assert clone.agent_identification.new_instance_uid != uid


async def test_bad_token_is_rejected_before_upgrade(start_server, make_settings) -> None:
    running = await start_server(make_settings(agent_auth_token="sekrit"))
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        async with httpx.AsyncClient(base_url=running.url) as http:  # rejection ends the socket
            denied = await http.get("/v1/opamp", headers={**upgrade, **auth})
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
    assert len(running.services.registry) == 0
    good = [("Authorization", "Bearer sekrit")]
    async with open_ws_agent(running.url, extra_headers=good) as agent:
        assert (await agent.full_state()).instance_uid == agent.uid


async def test_shutdown_closes_websockets_with_1001(start_server, make_settings) -> None:
    running = await start_server(make_settings())
    async with open_ws_agent(running.url) as agent:
        await agent.full_state()
        running.services.shutdown.set()
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(5):
                await agent.ws.get_message()
        assert info.value.reason.code == 1001
