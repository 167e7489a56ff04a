"""Protocol hot-path benchmarks (pytest-benchmark).

Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_protocol.py --noconftest``
(the file is outside the default ``testpaths``; the name is given explicitly).
"""

from __future__ import annotations

import os

import pytest

from opamp_fast.protocol import (
    AgentState,
    ServerPolicy,
    Session,
    Transport,
    decode_agent_to_server,
    decode_ws_payload,
    encode_server_to_agent,
    encode_ws_frame,
    pb,
    process_message,
)

UID = os.urandom(16)
MAX = 64 * 1024 * 1024
POLICY = ServerPolicy()


def _heartbeat(seq: int = 42) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=0x3007)


def _full_state() -> pb.AgentToServer:
    msg = _heartbeat()
    desc = msg.agent_description
    for key, value in [("service.name", "checkout"), ("service.version", "1.2.3")]:
        kv = desc.identifying_attributes.add()
        kv.key = key
        kv.value.string_value = value
    for i in range(10):
        kv = desc.non_identifying_attributes.add()
        kv.key = f"host.attr.{i}"
        kv.value.string_value = "x" * 20
    msg.health.healthy = True
    msg.health.start_time_unix_nano = 1_700_000_000_000_000_000
    for name in ("receiver/otlp", "processor/batch", "exporter/otlp"):
        msg.health.component_health_map[name].healthy = True
    msg.effective_config.config_map.config_map["config.yaml"].body = b"receivers: {}\n" * 100
    msg.remote_config_status.last_remote_config_hash = b"h" * 32
    msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
    return msg


HEARTBEAT = _heartbeat().SerializeToString()
FULL_STATE = _full_state().SerializeToString()
FRAME = encode_ws_frame(HEARTBEAT)


def _response() -> pb.ServerToAgent:
    resp = pb.ServerToAgent(instance_uid=UID, capabilities=0x37)
    resp.remote_config.config_hash = b"c" * 32
    entry = resp.remote_config.config.config_map["config.yaml"]
    entry.body = b"receivers: {}\n" * 50
    entry.content_type = "text/yaml"
    return resp


def test_decode_heartbeat(benchmark: pytest.FixtureRequest) -> None:
    msg = benchmark(decode_agent_to_server, HEARTBEAT, max_bytes=MAX)
    assert msg.sequence_num == 42


def test_decode_full_state(benchmark: pytest.FixtureRequest) -> None:
    msg = benchmark(decode_agent_to_server, FULL_STATE, max_bytes=MAX)
    assert msg.HasField("agent_description")


def test_encode_heartbeat_response(benchmark: pytest.FixtureRequest) -> None:
    resp = pb.ServerToAgent(instance_uid=UID)
    assert len(benchmark(encode_server_to_agent, resp, max_bytes=MAX)) == 18


def test_encode_config_response(benchmark: pytest.FixtureRequest) -> None:
    resp = _response()
    assert benchmark(encode_server_to_agent, resp, max_bytes=MAX)


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
def test_process_heartbeat(benchmark: pytest.FixtureRequest, transport: Transport) -> None:
    agent = AgentState(UID)
    session = Session(transport)
    process_message(
        agent, session, _full_state(), policy=POLICY, now=0.0, new_uid=lambda: os.urandom(16)
    )
    hb = _heartbeat(43)

    def step() -> object:
        agent.sequence_num = 42  # keep every iteration a +1 heartbeat
        return process_message(agent, session, hb, policy=POLICY, now=1.0, new_uid=os.urandom)

    reply = benchmark(step)
    assert not reply.response.flags


def test_process_full_state(benchmark: pytest.FixtureRequest) -> None:
    agent = AgentState(UID)
    session = Session(Transport.WS)
    msg = _full_state()
    process_message(agent, session, msg, policy=POLICY, now=0.0, new_uid=os.urandom)
    reply = benchmark(
        process_message, agent, session, msg, policy=POLICY, now=1.0, new_uid=os.urandom
    )
    assert not reply.response.flags


def test_heartbeat_end_to_end_ws(benchmark: pytest.FixtureRequest) -> None:
    """Frame in -> decode -> process -> encode -> frame out."""
    agent = AgentState(UID)
    session = Session(Transport.WS)
    process_message(agent, session, _full_state(), policy=POLICY, now=0.0, new_uid=os.urandom)

    def step() -> bytes:
        agent.sequence_num = 41
        msg = decode_agent_to_server(decode_ws_payload(FRAME), max_bytes=MAX)
        reply = process_message(agent, session, msg, policy=POLICY, now=1.0, new_uid=os.urandom)
        return encode_ws_frame(encode_server_to_agent(reply.response, max_bytes=MAX))

    assert benchmark(step)[0] == 0


def test_framing_decode(benchmark: pytest.FixtureRequest) -> None:
    assert benchmark(decode_ws_payload, FRAME) == HEARTBEAT


def test_framing_encode(benchmark: pytest.FixtureRequest) -> None:
    assert benchmark(encode_ws_frame, HEARTBEAT) == FRAME
