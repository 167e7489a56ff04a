"""Fuzz invariant (h11's afl harness): arbitrary bytes into the framing, the codec and the
core produce a message or a RemoteProtocolError, never anything else."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opamp_fast.protocol import (
    AgentState,
    RemoteProtocolError,
    ServerPolicy,
    Session,
    Transport,
    decode_agent_to_server,
    decode_server_to_agent,
    decode_ws_payload,
    encode_server_to_agent,
    normalize_instance_uid,
    pb,
    process_message,
)

MAX = 4096
POLICY = ServerPolicy(custom_capabilities=("io.x/y",))
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_frame() -> bytes:
    msg = pb.AgentToServer(instance_uid=bytes(range(16)), sequence_num=5, capabilities=0xFFFF)
    kv = msg.agent_description.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "svc"
    msg.health.component_health_map["x"].healthy = True
    msg.remote_config_status.last_remote_config_hash = b"h"
    msg.available_components.hash = b"a"
    msg.agent_disconnect.SetInParent()
    msg.flags = 1
    return b"\x00" + msg.SerializeToString()


VALID = _valid_frame()


def _check_remote_error(err: RemoteProtocolError) -> None:
    assert err.kind in {"bad_header", "empty", "decode", "too_large", "bad_instance_uid"}
    assert err.close_code_hint in {1002, 1009}
    assert err.http_status_hint in {400, 413}


def _pipeline(frame: bytes, transport: Transport) -> None:
    """What a transport does with one frame; only RemoteProtocolError may escape."""
    try:
        payload = decode_ws_payload(frame)
        msg = decode_agent_to_server(payload, max_bytes=MAX)
        uid = normalize_instance_uid(msg.instance_uid)
    except RemoteProtocolError as exc:
        _check_remote_error(exc)
        return
    assert isinstance(msg, pb.AgentToServer)
    assert len(uid) == 16
    agent = AgentState(uid, msg.instance_uid)
    agent.set_remote_config({"c": (b"x", "text/plain")})
    reply = process_message(
        agent,
        Session(transport),
        msg,
        policy=POLICY,
        now=0.0,
        new_uid=lambda: os.urandom(16),
    )
    data = encode_server_to_agent(reply.response, max_bytes=1 << 20)
    assert decode_server_to_agent(data).instance_uid == msg.instance_uid


@FUZZ
@given(st.binary(max_size=MAX + 16), st.sampled_from(Transport))
@example(b"", Transport.WS)
@example(b"\x00", Transport.WS)
@example(b"\x01\x0a", Transport.WS)
@example(b"\x00" + b"\x0a\x10" + bytes(16), Transport.HTTP)
@example(b"\x0a\x1a" + b"01ARZ3NDEKTSV4RRFFQ69G5FAV", Transport.HTTP)
@example(VALID, Transport.WS)
def test_arbitrary_bytes(frame: bytes, transport: Transport) -> None:
    _pipeline(frame, transport)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.integers(0, len(VALID)),
    st.sampled_from(Transport),
)
def test_mutated_valid_message(
    edits: list[tuple[int, int]], cut: int, transport: Transport
) -> None:
    frame = bytearray(VALID)
    for pos, value in edits:
        frame[pos] = value
    _pipeline(bytes(frame[:cut]), transport)


@FUZZ
@given(st.binary(max_size=512))
def test_server_to_agent_decoder(data: bytes) -> None:
    kind = None
    try:
        msg = decode_server_to_agent(data)
    except RemoteProtocolError as exc:
        kind = exc.kind
    else:
        assert isinstance(msg, pb.ServerToAgent)
    assert kind in {None, "decode"}
