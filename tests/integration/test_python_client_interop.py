"""The sixteen interop cases of the protocol digest (section 6), each against the live server
with the official Python client ``opentelemetry-opamp-client`` unchanged, over loopback HTTP.

The client is synchronous (requests + threads): its calls run in worker threads while the
server runs in this test's event loop (asyncio and trio, each test on both).
"""

from __future__ import annotations

import gzip
import json
import threading
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from opentelemetry._opamp import OpAMPAgent, OpAMPCallbacks, OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as client_pb
from opentelemetry._opamp.transport.exceptions import OpAMPException

from opamp_fast.protocol import pb
from tests.conftest import free_port
from tests.helpers.agents import HandlerSpy, wait_for
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.helpers.proxy import open_delay_proxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPORT_FULL_STATE = 0x1


class Callbacks(OpAMPCallbacks):
    """Records what the client saw; applies JSON configs and reports APPLIED (or FAILED)."""

    def __init__(self, fail_with: str | None = None) -> None:
        self.lock = threading.Lock()
        self.connects = 0
        self.connect_failures: list[Exception] = []
        self.errors: list[Any] = []
        self.configs: list[dict[str, Any]] = []
        self.fail_with = fail_with

    def on_connect(self, agent: Any, client: Any) -> None:
        with self.lock:
            self.connects += 1

    def on_connect_failed(self, agent: Any, client: Any, error: Exception) -> None:
        with self.lock:
            self.connect_failures.append(error)

    def on_error(self, agent: Any, client: Any, error_response: Any) -> None:
        with self.lock:
            self.errors.append(error_response)

    def on_message(self, agent: Any, client: Any, message: Any) -> None:
        if message.remote_config is None:
            return
        applied = dict(client.decode_remote_config(message.remote_config))
        with self.lock:
            self.configs.append(applied)
        if self.fail_with:
            status = client.update_remote_config_status(
                message.remote_config.config_hash,
                client_pb.RemoteConfigStatuses_FAILED,
                self.fail_with,
            )
        else:
            status = client.update_remote_config_status(
                message.remote_config.config_hash, client_pb.RemoteConfigStatuses_APPLIED
            )
        if status is not None:
            agent.send(client.build_remote_config_status_response_message(status))


def make_client(url: str, **kw: Any) -> OpAMPClient:
    return OpAMPClient(
        endpoint=url + "/v1/opamp",
        timeout_millis=kw.pop("timeout_millis", 1000),
        agent_identifying_attributes={"service.name": kw.pop("name", "interop-svc")},
        agent_non_identifying_attributes={"host.name": "test-host"},
        **kw,
    )


class FlagCountingAgent(OpAMPAgent):
    """The official agent, unchanged but for counting the full-state requests it receives: what
    the agent was asked, seen from the agent's side (a server-side spy can only be installed
    after the listener accepts, and a retrying agent may get in first)."""

    full_state_requests = 0

    def _process_message(self, message: Any) -> None:
        if message.flags & REPORT_FULL_STATE:
            self.full_state_requests += 1
        super()._process_message(message)


def make_agent(
    client: OpAMPClient, callbacks: Callbacks, interval: float = 1.0
) -> FlagCountingAgent:
    return FlagCountingAgent(
        interval=interval,
        callbacks=callbacks,
        client=client,
        max_retries=10,
        heartbeat_max_retries=1,
        initial_backoff=0.2,
    )


async def in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


@pytest.fixture
def stop_agents():
    agents: list[OpAMPAgent] = []
    yield agents.append
    for agent in agents:
        agent._stop.set()  # threads exit; no extra agent_disconnect needed at teardown


JSON_CONFIG = {"x.json": (json.dumps({"sampling": 0.5}).encode(), "application/json")}


# 1 ------------------------------------------------------------------------------------------
async def test_01_start_sends_full_state_and_registers(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    agent = make_agent(client, callbacks)
    spy = HandlerSpy.install(server)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: callbacks.connects >= 1)
    first = spy.requests[0]
    assert first.instance_uid == client._instance_uid and len(first.instance_uid) == 16
    assert first.sequence_num == 0 and first.capabilities == 0x3007
    reply = spy.responses[0]
    assert reply.instance_uid == client._instance_uid
    assert reply.capabilities & 0x7 == 0x7
    record = server.services.registry.get(client._instance_uid)
    assert record.online
    name = record.state.description.identifying_attributes[0]
    assert (name.key, name.value.string_value) == ("service.name", "interop-svc")


# 2 ------------------------------------------------------------------------------------------
async def test_02_heartbeats_update_last_seen_without_full_state(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    spy = HandlerSpy.install(server)
    server.services.fleet.assign_remote_config(client._instance_uid, JSON_CONFIG)
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    record = None

    def heartbeats() -> int:
        return sum(
            1
            for m in spy.requests
            if not m.HasField("agent_description") and not m.HasField("remote_config_status")
        )

    await wait_for(lambda: heartbeats() >= 4, timeout=10)
    record = server.services.registry.get(client._instance_uid)
    seen = record.last_seen
    await wait_for(lambda: record.last_seen > seen, timeout=5)
    assert not any(r.flags & REPORT_FULL_STATE for r in spy.responses)
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1
    assert len(callbacks.configs) == 1


# 3 + 4 --------------------------------------------------------------------------------------
async def test_03_04_config_before_connect_applied_and_not_resent(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    config_hash = server.services.fleet.assign_remote_config(client._instance_uid, JSON_CONFIG)
    spy = HandlerSpy.install(server)
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: callbacks.configs, timeout=5)
    first = spy.responses[0]
    assert first.remote_config.config_hash == config_hash
    entry = first.remote_config.config.config_map["x.json"]
    assert entry.content_type == "application/json"
    assert callbacks.configs[0] == {"x.json": {"sampling": 0.5}}
    record = server.services.registry.get(client._instance_uid)
    await wait_for(lambda: record.state.remote_config_status is not None, timeout=5)
    assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    assert record.state.remote_config_status.last_remote_config_hash == config_hash
    count = len(spy.requests)
    await wait_for(lambda: len(spy.requests) >= count + 3, timeout=10)  # heartbeats follow
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1


# 5 ------------------------------------------------------------------------------------------
async def test_05_failed_status_stored_not_resent_new_hash_goes_out(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks(fail_with="bad sampling value")
    fleet = server.services.fleet
    first_hash = fleet.assign_remote_config(client._instance_uid, JSON_CONFIG)
    spy = HandlerSpy.install(server)
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    record = server.services.registry.get(client._instance_uid)
    await wait_for(lambda: record.state.remote_config_status is not None, timeout=5)
    status = record.state.remote_config_status
    assert status.status == pb.RemoteConfigStatuses_FAILED
    assert status.error_message == "bad sampling value"
    assert status.last_remote_config_hash == first_hash
    count = len(spy.requests)
    await wait_for(lambda: len(spy.requests) >= count + 3, timeout=10)
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1  # no resend on FAILED
    callbacks.fail_with = None
    new_hash = fleet.assign_remote_config(
        client._instance_uid, {"x.json": (b'{"sampling": 0.25}', "application/json")}
    )
    await wait_for(lambda: len(callbacks.configs) == 2, timeout=5)
    assert callbacks.configs[1] == {"x.json": {"sampling": 0.25}}
    await wait_for(
        lambda: record.state.remote_config_status.last_remote_config_hash == new_hash, timeout=5
    )
    assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED


# 6 ------------------------------------------------------------------------------------------
async def test_06_config_change_rides_next_heartbeat(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    spy = HandlerSpy.install(server)
    agent = make_agent(client, callbacks, interval=0.5)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: callbacks.connects >= 2, timeout=5)  # first heartbeat answered
    changed_at = anyio.current_time()
    server.services.fleet.assign_remote_config(client._instance_uid, JSON_CONFIG)
    await wait_for(lambda: callbacks.configs, timeout=5)
    delivered_after = anyio.current_time() - changed_at
    assert delivered_after <= 0.5 + 0.5  # within one interval plus round trip
    carrying = [r for r in spy.responses if r.HasField("remote_config")]
    assert len(carrying) == 1


# 7 ------------------------------------------------------------------------------------------
async def test_07_server_restart_asks_unknown_agent_for_full_state_once(
    start_server, make_settings, stop_agents
) -> None:
    settings = make_settings(port=free_port())
    first = await start_server(settings)
    client = make_client(first.url)
    callbacks = Callbacks()
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: callbacks.connects >= 2, timeout=5)
    assert agent.full_state_requests == 0  # the first message was the full state already
    first.services.shutdown.set()  # state wiped: a new process knows nothing of the agent
    await wait_for(lambda: callbacks.connect_failures, timeout=10)
    second = await start_server(settings)
    await wait_for(
        lambda: (
            second.services.registry.get(client._instance_uid) is not None
            and second.services.registry.get(client._instance_uid).state.description is not None
        ),
        timeout=10,
    )
    assert agent.full_state_requests == 1
    spy = HandlerSpy.install(second)
    await wait_for(lambda: len(spy.requests) >= 3, timeout=10)  # heartbeats go on
    assert agent.full_state_requests == 1  # no loop
    assert not any(r.flags & REPORT_FULL_STATE for r in spy.responses)
    assert second.services.registry.get(client._instance_uid).online


# 8 ------------------------------------------------------------------------------------------
async def test_08_slow_reply_retry_duplicate_seq_and_gap(server, database_url, stop_agents):
    spy = HandlerSpy.install(server)
    port = int(server.url.rsplit(":", 1)[1])
    # A slow network: the first reply outlives the client's 1 s timeout.
    async with open_delay_proxy(port, delays=[1.5]) as slow_url:
        client = make_client(slow_url)
        callbacks = Callbacks()
        agent = make_agent(client, callbacks, interval=0.5)
        await in_thread(agent.start)
        stop_agents(agent)
        await wait_for(lambda: len(spy.responses) >= 6, timeout=15)
    seqs = [m.sequence_num for m in spy.requests]
    assert seqs[:2] == [0, 0]  # the retried payload keeps its seq
    assert len(spy.responses) == len(spy.requests)  # every duplicate answered
    assert len([r for r in spy.responses if r.flags & REPORT_FULL_STATE]) <= 1
    record = server.services.registry.get(client._instance_uid)
    assert record.online

    def sessions() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM agent_connection_history WHERE instance_uid = %s",
                (client._instance_uid,),
            ).fetchone()
        return row[0]

    await wait_for(lambda: sessions() == 1, timeout=5)  # no double counting


# 9 ------------------------------------------------------------------------------------------
async def test_09_stop_sends_disconnect_twice_offline_then_revived(server) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    spy = HandlerSpy.install(server)
    agent = make_agent(client, callbacks, interval=5)
    await in_thread(agent.start)
    await wait_for(lambda: callbacks.connects >= 1)
    await in_thread(agent.stop)
    await in_thread(agent.stop)  # what atexit does after an explicit stop()
    record = server.services.registry.get(client._instance_uid)
    assert not record.online
    assert record.disconnect_reason == "agent_disconnect"
    disconnects = [m for m in spy.requests if m.HasField("agent_disconnect")]
    assert len(disconnects) == 2
    assert all(r.instance_uid == client._instance_uid for r in spy.responses)
    assert server.services.registry.statistics().status_changes[("online", "offline")] == 1
    reply = await in_thread(client.send, client.build_heartbeat_message())
    assert reply.instance_uid == client._instance_uid
    assert record.online  # a later message revives it


# 10 -----------------------------------------------------------------------------------------
async def test_10_gzip_both_ways(server) -> None:
    client = make_client(server.url)
    reply = await in_thread(client.send, client.build_full_state_message())  # Accept-Encoding gzip
    assert reply.instance_uid == client._instance_uid
    async with httpx.AsyncClient(base_url=server.url) as http:
        raw = await http.post(
            "/v1/opamp",
            content=gzip.compress(client.build_heartbeat_message()),
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "Accept-Encoding": "gzip, deflate",
            },
        )
    assert raw.status_code == 200 and raw.headers["content-encoding"] == "gzip"
    assert pb.ServerToAgent.FromString(raw.content).instance_uid == client._instance_uid


# 11 -----------------------------------------------------------------------------------------
async def test_11_garbage_body_gets_bad_request(server) -> None:
    client = make_client(server.url)
    before = len(server.services.registry)
    reply = await in_thread(client.send, b"\xde\xad\xbe\xef garbage")
    assert reply.HasField("error_response")
    assert reply.error_response.type == client_pb.ServerErrorResponseType_BadRequest
    assert len(server.services.registry) == before


# 12 -----------------------------------------------------------------------------------------
async def test_12_wrong_token_401_good_token_works(start_server, make_settings, stop_agents):
    running = await start_server(make_settings(agent_auth_token="right"))
    bad = make_client(running.url, headers={"Authorization": "Bearer wrong"})
    callbacks = Callbacks()
    agent = OpAMPAgent(
        interval=5, callbacks=callbacks, client=bad, max_retries=1, initial_backoff=0.05
    )
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: len(callbacks.connect_failures) >= 2, timeout=5)
    assert all("401" in str(e) for e in callbacks.connect_failures)
    assert running.services.registry.get(bad._instance_uid) is None
    good = make_client(running.url, headers={"Authorization": "Bearer right"})
    reply = await in_thread(good.send, good.build_full_state_message())
    assert reply.instance_uid == good._instance_uid


# 13 -----------------------------------------------------------------------------------------
async def test_13_503_retry_after_then_recovery(start_server, make_settings) -> None:
    running = await start_server(make_settings(max_connections=1))
    port = int(running.url.rsplit(":", 1)[1])
    client = make_client(running.url)
    async with httpx.AsyncClient(base_url=running.url) as http:
        # A slow agent whose POST body is still arriving occupies the only slot.
        occupier = await anyio.connect_tcp("127.0.0.1", port)
        body = make_client(running.url, name="occupier").build_full_state_message()
        head = (
            "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        await occupier.send(head.encode() + body[:3])
        await wait_for(lambda: running.services.opamp.stats.http_open == 1)
        with pytest.raises(OpAMPException) as info:
            await in_thread(client.send, client.build_full_state_message())
        assert "503" in str(info.value)
        raw = await http.post(
            "/v1/opamp",
            content=client.build_full_state_message(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert raw.status_code == 503 and int(raw.headers["retry-after"]) >= 30
        assert running.services.registry.get(client._instance_uid) is None  # shed cheaply
        await occupier.send(body[3:])  # the slow request completes and frees the slot
        answer = await occupier.receive()
        assert answer.startswith(b"HTTP/1.1 200")
        await occupier.aclose()
    reply = await in_thread(client.send, client.build_full_state_message())
    assert reply.instance_uid == client._instance_uid
    assert running.services.registry.get(client._instance_uid).online


# 14 -----------------------------------------------------------------------------------------
async def test_14_in_band_unavailable_client_keeps_polling(server, stop_agents) -> None:
    from opamp_fast.protocol import error_response

    client = make_client(server.url)
    callbacks = Callbacks()
    spy = HandlerSpy.install(server)
    spy.override = error_response(pb.ServerErrorResponseType_Unavailable, "busy", retry_after_s=5.0)
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: len(callbacks.errors) >= 2, timeout=10)
    for reply in spy.responses:  # nothing else rides with an error response
        assert reply.ListFields()[0][0].name == "error_response"
        assert reply.error_response.retry_info.retry_after_nanoseconds == 5_000_000_000
    spy.override = None
    await wait_for(
        lambda: (
            server.services.registry.get(client._instance_uid) is not None
            and server.services.registry.get(client._instance_uid).online
        ),
        timeout=10,
    )


# 15 -----------------------------------------------------------------------------------------
async def test_15_capability_gating_for_0x3007(server, stop_agents) -> None:
    client = make_client(server.url)
    callbacks = Callbacks()
    spy = HandlerSpy.install(server)
    agent = make_agent(client, callbacks, interval=0.3)
    await in_thread(agent.start)
    stop_agents(agent)
    await wait_for(lambda: len(spy.responses) >= 3, timeout=10)
    for reply in spy.responses:
        assert not reply.HasField("connection_settings")
        assert not reply.HasField("packages_available")
        assert not reply.HasField("command")
        assert not reply.HasField("agent_identification")


# 16 -----------------------------------------------------------------------------------------
async def test_16_body_over_limit_is_413(start_server, make_settings) -> None:
    running = await start_server(make_settings(max_message_bytes=4096))
    client = make_client(running.url, name="x" * 10_000)
    with pytest.raises(OpAMPException) as info:
        await in_thread(client.send, client.build_full_state_message())
    assert "413" in str(info.value)
