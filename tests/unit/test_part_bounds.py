"""Status parts over the server's bounds are refused from the wire, before the decode: the
codec's scan (``check_part_sizes``) and the sans-IO connection that uses it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from opamp_fast.native.wsframe import OP_BINARY, encode_client_frame
from opamp_fast.protocol import (
    RemoteProtocolError,
    ServerPolicy,
    anyvalue_pb,
    check_bounds,
    decode_agent_to_server,
    pb,
)
from opamp_fast.protocol.codec import PartBounds, check_part_sizes
from opamp_fast.transport import Limits, OpAMPConnection, TransportStats
from opamp_fast.transport.handlers import ACCEPT

BOUNDS = PartBounds(description_bytes=64 * 1024, part_bytes=1024 * 1024)
POLICY = ServerPolicy(max_description_bytes=64 * 1024, max_status_part_bytes=1024 * 1024)
UID = os.urandom(16)


def description_of(size: int) -> pb.AgentDescription:
    attrs = [
        anyvalue_pb.KeyValue(key=f"k{i}", value=anyvalue_pb.AnyValue(string_value="v" * 90))
        for i in range(size // 100)
    ]
    return pb.AgentDescription(non_identifying_attributes=attrs)


def effective_config_of(size: int) -> pb.EffectiveConfig:
    config = pb.EffectiveConfig()
    config.config_map.config_map["c.yaml"].body = b"x" * size
    return config


def refusal(data: bytes) -> str | None:
    """Why the scan refuses ``data`` (always as ``too_large_state``), None when it does not."""
    try:
        check_part_sizes(data, BOUNDS)
    except RemoteProtocolError as exc:
        return f"{exc}" if exc.kind == "too_large_state" else f"wrong kind {exc.kind}"
    return None


def test_a_huge_description_is_refused_by_its_length() -> None:
    data = pb.AgentToServer(
        instance_uid=UID, agent_description=description_of(200_000)
    ).SerializeToString()
    reason = refusal(data)
    assert reason is not None and reason.startswith("agent_description of ")
    assert "exceeds what the server keeps (65536 bytes)" in reason


def test_each_part_has_its_bound_and_unkept_fields_have_none() -> None:
    near = description_of(60 * 1024)  # under the description bound
    ok = pb.AgentToServer(instance_uid=UID, agent_description=near)
    ok.effective_config.CopyFrom(effective_config_of(900 * 1024))  # under the part bound
    request = ok.connection_settings_request.opamp.certificate_request
    request.csr = b"y" * (4 * 1024 * 1024)  # not kept: only the message bound
    assert refusal(ok.SerializeToString()) is None
    over = pb.AgentToServer(instance_uid=UID, effective_config=effective_config_of(2 << 20))
    reason = refusal(over.SerializeToString())
    assert reason is not None and reason.startswith("effective_config of ")


def test_a_custom_message_has_its_own_bound() -> None:
    small = pb.AgentToServer(instance_uid=UID)
    small.custom_message.data = b"y" * (60 * 1024)
    assert refusal(small.SerializeToString()) is None
    big = pb.AgentToServer(instance_uid=UID)
    big.custom_message.capability = "io.example.big/v1"
    big.custom_message.data = b"y" * (70 * 1024)
    reason = refusal(big.SerializeToString())
    assert reason is not None and reason.startswith("custom_message of ")
    with pytest.raises(RemoteProtocolError, match=r"custom_message of .*\(65536 bytes\)"):
        check_bounds(big, POLICY)  # after decoding too
    check_bounds(big, ServerPolicy(max_custom_message_bytes=128 * 1024))


def test_repeated_occurrences_add_up_as_the_decoder_merges_them() -> None:
    half = pb.AgentToServer(agent_description=description_of(40 * 1024)).SerializeToString()
    data = pb.AgentToServer(instance_uid=UID).SerializeToString() + half + half
    assert refusal(half) is None
    assert refusal(data) is not None
    with pytest.raises(RemoteProtocolError):  # what decoding and check_bounds would have said
        check_bounds(pb.AgentToServer.FromString(data), POLICY)


@pytest.mark.parametrize(
    "data",
    [
        b"\x1a\xff\xff\xff\xff\x0f" + b"x" * 70_000,  # a description longer than the message
        b"\x1a" + b"\xff" * 11 + b"x" * 70_000,  # a length that is no varint
        b"\x0b" + b"x" * 70_000,  # a group: left to the decoder
    ],
)
def test_what_the_scan_cannot_read_is_left_to_the_decoder(data: bytes) -> None:
    assert refusal(data) is None
    with pytest.raises(RemoteProtocolError) as caught:
        decode_agent_to_server(data, max_bytes=1 << 20, part_bounds=BOUNDS)
    assert caught.value.kind == "decode"


def test_small_messages_are_not_scanned_and_decode_as_before() -> None:
    msg = pb.AgentToServer(instance_uid=UID, agent_description=description_of(2_000))
    decoded = decode_agent_to_server(msg.SerializeToString(), max_bytes=1 << 20, part_bounds=BOUNDS)
    assert decoded == msg


def server_payload(frame: bytes) -> bytes:
    """The payload of one unmasked server frame (each write of the connection is one)."""
    length = frame[1] & 0x7F
    start = 2 + {126: 2, 127: 8}.get(length, 0)
    return frame[start:]


class Spy:
    """A handler that records whether a message reached it."""

    def __init__(self) -> None:
        self.messages: list[pb.AgentToServer] = []
        self.errors: list[str] = []

    def on_connecting(self, request: Any) -> Any:
        return ACCEPT

    def on_connected(self, conn: Any) -> None:
        pass

    def on_heartbeat(self, conn: Any, uid: bytes, seq: int, caps: int) -> None:
        return None  # declined: every message goes through the decoder and on_message

    def on_message(self, conn: Any, msg: pb.AgentToServer) -> pb.ServerToAgent:
        self.messages.append(msg)
        return pb.ServerToAgent(instance_uid=msg.instance_uid)

    def on_read_message_error(self, conn: Any, error: Any) -> None:
        self.errors.append(error.kind)

    def on_connection_close(self, conn: Any) -> None:
        pass


def test_the_connection_refuses_before_decoding_and_keeps_the_socket() -> None:
    spy = Spy()
    limits = Limits(handler=spy, stats=TransportStats(), part_bounds=BOUNDS)  # type: ignore[arg-type]
    out: list[bytes] = []
    conn = OpAMPConnection(limits, "127.0.0.1:1", out.append, 0.0)
    conn.receive_data(
        b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        0.0,
    )
    huge = pb.AgentToServer(instance_uid=UID, agent_description=description_of(200_000))
    for msg in (huge, pb.AgentToServer(instance_uid=UID)):
        payload = b"\x00" + msg.SerializeToString()
        conn.receive_data(encode_client_frame(OP_BINARY, payload, mask=b"\x01\x02\x03\x04"), 0.0)
    assert [len(m.agent_description.non_identifying_attributes) for m in spy.messages] == [0]
    assert spy.errors == ["too_large_state"]
    replies = [pb.ServerToAgent.FromString(server_payload(frame)[1:]) for frame in out[1:]]
    assert replies[0].error_response.type == pb.ServerErrorResponseType_BadRequest
    assert "exceeds what the server keeps" in replies[0].error_response.error_message
    assert replies[1].instance_uid == UID  # the socket carried on
    assert limits.stats.errors[(conn.transport, "too_large_state")] == 1
