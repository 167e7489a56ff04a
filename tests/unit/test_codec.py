"""codec: roundtrips, size limits, instance-uid forms, errors, interop with the official
client's generated classes in the same process, and the int constants."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry._opamp.proto import anyvalue_pb2 as client_anyvalue_pb
from opentelemetry._opamp.proto import opamp_pb2 as client_pb

import opamp_fast.protocol as protocol
from opamp_fast.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    LocalProtocolError,
    MessageTooLargeError,
    OpAMPError,
    ProtocolError,
    RemoteProtocolError,
    anyvalue_pb,
    decode_agent_to_server,
    decode_server_to_agent,
    encode_agent_to_server,
    encode_server_to_agent,
    format_instance_uid,
    normalize_instance_uid,
    parse_instance_uid_text,
    pb,
)

UID = bytes(range(16))
MAX = DEFAULT_MAX_MESSAGE_BYTES


def full_state() -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=7, capabilities=0x3007)
    kv = msg.agent_description.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "svc"
    msg.health.healthy = True
    msg.health.component_health_map["receiver/otlp"].status = "ok"
    msg.effective_config.config_map.config_map["c.yaml"].body = b"a: 1"
    msg.remote_config_status.last_remote_config_hash = b"h"
    msg.remote_config_status.status = pb.RemoteConfigStatuses_FAILED
    return msg


def response() -> pb.ServerToAgent:
    resp = pb.ServerToAgent(instance_uid=UID, capabilities=0x37, flags=1)
    resp.remote_config.config_hash = b"h" * 32
    entry = resp.remote_config.config.config_map["x.json"]
    entry.body = b"{}"
    entry.content_type = "application/json"
    resp.connection_settings.hash = b"s" * 32
    resp.connection_settings.opamp.heartbeat_interval_seconds = 30
    return resp


# --- roundtrips ----------------------------------------------------------------------------


def test_agent_to_server_roundtrip() -> None:
    msg = full_state()
    data = encode_agent_to_server(msg)
    assert decode_agent_to_server(data, max_bytes=MAX) == msg


def test_server_to_agent_roundtrip() -> None:
    resp = response()
    data = encode_server_to_agent(resp, max_bytes=MAX)
    assert decode_server_to_agent(data) == resp


def test_empty_server_to_agent_decodes() -> None:
    assert decode_server_to_agent(b"") == pb.ServerToAgent()


# --- size limits -------------------------------------------------------------------------


def test_decode_limit_is_inclusive() -> None:
    data = full_state().SerializeToString()
    assert decode_agent_to_server(data, max_bytes=len(data)) == full_state()
    with pytest.raises(MessageTooLargeError) as exc:
        decode_agent_to_server(data, max_bytes=len(data) - 1)
    err = exc.value
    assert isinstance(err, RemoteProtocolError)
    assert (err.kind, err.close_code_hint, err.http_status_hint) == ("too_large", 1009, 413)
    assert (err.size, err.limit) == (len(data), len(data) - 1)


def test_size_is_checked_before_parsing() -> None:
    with pytest.raises(MessageTooLargeError):
        decode_agent_to_server(b"\xff" * 101, max_bytes=100)


def test_encode_over_limit_is_local_error() -> None:
    resp = response()
    size = resp.ByteSize()
    assert len(encode_server_to_agent(resp, max_bytes=size)) == size
    with pytest.raises(LocalProtocolError) as exc:
        encode_server_to_agent(resp, max_bytes=size - 1)
    assert exc.value.kind == "too_large"
    assert exc.value.http_status_hint == 500
    with pytest.raises(LocalProtocolError):
        encode_agent_to_server(full_state(), max_bytes=10)


def test_decode_server_to_agent_limits_and_errors() -> None:
    with pytest.raises(MessageTooLargeError):
        decode_server_to_agent(b"\x08" * 11, max_bytes=10)
    with pytest.raises(RemoteProtocolError) as exc:
        decode_server_to_agent(b"\x0a\x05ab")
    assert exc.value.kind == "decode"


# --- decode errors ---------------------------------------------------------------------------


def test_empty_payload() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        decode_agent_to_server(b"", max_bytes=MAX)
    assert exc.value.kind == "empty"
    assert exc.value.close_code_hint == 1002
    assert exc.value.http_status_hint == 400


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x10" + b"x" * 5,  # truncated bytes field
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # overlong varint
        b"\x0f",  # invalid wire type (7)
        b"garbage that is not protobuf",
        b"\x0a\x10" + UID + b"\x1a\x05\x0a\x03\x0a\x01\xff",  # invalid UTF-8 in a string
    ],
)
def test_undecodable(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        decode_agent_to_server(data, max_bytes=MAX)
    assert exc.value.kind == "decode"
    assert "AgentToServer" in str(exc.value)
    assert exc.value.__cause__ is not None


def test_missing_instance_uid() -> None:
    data = pb.AgentToServer(sequence_num=1, capabilities=1).SerializeToString()
    with pytest.raises(RemoteProtocolError) as exc:
        decode_agent_to_server(data, max_bytes=MAX)
    assert exc.value.kind == "bad_instance_uid"


def test_unknown_fields_are_tolerated() -> None:
    data = pb.AgentToServer(instance_uid=UID).SerializeToString() + b"\xa0\x06\x01"  # field 100
    assert decode_agent_to_server(data, max_bytes=MAX).instance_uid == UID


# --- errors ---------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(ProtocolError, OpAMPError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(MessageTooLargeError, RemoteProtocolError)
    with pytest.raises(TypeError):
        ProtocolError("x", kind="x")
    err = RemoteProtocolError("bad", kind="bad_header")
    assert (err.close_code_hint, err.http_status_hint) == (1002, 400)
    assert repr(err) == "RemoteProtocolError('bad', kind='bad_header')"
    local = LocalProtocolError("ours", kind="too_large")
    assert (local.close_code_hint, local.http_status_hint) == (1011, 500)


# --- instance uids ----------------------------------------------------------------------------


def test_16_bytes_as_is() -> None:
    raw = bytes(16)
    assert normalize_instance_uid(raw) is raw


def _ulid_reference(text: str) -> bytes:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = 0
    for ch in text.upper():
        value = value * 32 + alphabet.index(ch)
    return value.to_bytes(16, "big")


@pytest.mark.parametrize(
    "ulid",
    [
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "01arz3ndektsv4rrffq69g5fav",
        "00000000000000000000000000",
        "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "01HQ3K9XWJ8S5VDF6M2N4P7RTY",
    ],
)
def test_legacy_ulid(ulid: str) -> None:
    assert normalize_instance_uid(ulid.encode()) == _ulid_reference(ulid)


def test_ulid_known_vector() -> None:
    # The ULID spec's example id.
    assert normalize_instance_uid(b"01ARZ3NDEKTSV4RRFFQ69G5FAV").hex() == (
        "01563e3ab5d3d6764c61efb99302bd5b"
    )
    assert normalize_instance_uid(b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ") == b"\xff" * 16


def test_uuid_string_bytes() -> None:
    u = uuid.UUID("0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6b")
    assert normalize_instance_uid(str(u).encode()) == u.bytes
    assert normalize_instance_uid(str(u).upper().encode()) == u.bytes


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 15,
        b"\x00" * 17,
        b"\x00" * 26,
        b"81ARZ3NDEKTSV4RRFFQ69G5FAV",  # > 128 bits
        b"01ARZ3NDEKTSV4RRFFQ69G5FAU",  # U is not Crockford
        b"01ARZ3NDEKTSV4RRFFQ69G5FA-",
        b"0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6g",
        b"0191f4e48c0e7c3ab2d59a1f3e4d5c6b----",
        b"x" * 32,
    ],
)
def test_bad_instance_uid(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        normalize_instance_uid(raw)
    assert exc.value.kind == "bad_instance_uid"


def test_format_and_parse_text() -> None:
    u = uuid.UUID("0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6b")
    assert format_instance_uid(u.bytes) == str(u)
    assert parse_instance_uid_text(str(u)) == u.bytes
    assert parse_instance_uid_text(str(u).upper()) == u.bytes
    assert parse_instance_uid_text(u.hex) == u.bytes
    assert format_instance_uid(UID) == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    with pytest.raises(ValueError, match="16 bytes"):
        format_instance_uid(b"\x00" * 15)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6b}",
        "urn:uuid:0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6b",
        "0191f4e48c0e-7c3a-b2d5-9a1f3e4d5c6b",
        "0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6",
        "0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6bb",
        "z" * 32,
        "0191f4e4-8c0e-7c3a-b2d5-9a1f3e4d5c6b\n",
        "\u0660" * 32,  # non-ASCII (Arabic-Indic) digits
    ],
)
def test_parse_text_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        parse_instance_uid_text(text)


# --- descriptor clash and interop with the official client's classes -------------------------


def test_both_schemas_load_in_one_process() -> None:
    assert client_pb.DESCRIPTOR.name == "opamp.proto"
    assert pb.DESCRIPTOR.name == "opamp/v1/opamp.proto"
    assert anyvalue_pb.DESCRIPTOR.name == "opamp/v1/anyvalue.proto"
    assert client_anyvalue_pb.DESCRIPTOR.name == "anyvalue.proto"
    assert pb.DESCRIPTOR.package == "opamp.proto.v1"
    assert pb.AgentToServer.DESCRIPTOR.full_name == "opamp.proto.v1.AgentToServer"


def test_client_bytes_decode_with_ours() -> None:
    theirs = client_pb.AgentToServer(instance_uid=UID, sequence_num=3, capabilities=0x3007)
    kv = theirs.agent_description.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "svc"
    theirs.remote_config_status.last_remote_config_hash = b"h"
    theirs.remote_config_status.status = client_pb.RemoteConfigStatuses_APPLIED
    theirs.agent_disconnect.SetInParent()
    ours = decode_agent_to_server(theirs.SerializeToString(), max_bytes=MAX)
    assert ours.sequence_num == 3
    assert ours.capabilities == 0x3007
    assert ours.agent_description.identifying_attributes[0].value.string_value == "svc"
    assert ours.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    assert ours.HasField("agent_disconnect")
    assert ours.SerializeToString() == theirs.SerializeToString()


def test_our_bytes_decode_with_the_client() -> None:
    resp = response()
    resp.agent_identification.new_instance_uid = b"n" * 16
    resp.custom_capabilities.capabilities.append("io.x/y")
    theirs = client_pb.ServerToAgent.FromString(encode_server_to_agent(resp, max_bytes=MAX))
    assert theirs.instance_uid == UID
    assert theirs.capabilities == 0x37
    assert theirs.flags == client_pb.ServerToAgentFlags_ReportFullState
    assert theirs.remote_config.config.config_map["x.json"].body == b"{}"
    assert theirs.connection_settings.opamp.heartbeat_interval_seconds == 30
    assert theirs.agent_identification.new_instance_uid == b"n" * 16


def test_fields_newer_than_the_client_survive_as_unknown() -> None:
    msg = pb.AgentToServer(instance_uid=UID)
    msg.connection_settings_status.last_connection_settings_hash = b"c"
    kv = msg.health.attributes.add()  # ComponentHealth.attributes = 7
    kv.key = "k"
    data = msg.SerializeToString()
    theirs = client_pb.AgentToServer.FromString(data)
    assert theirs.SerializeToString() == data  # preserved as unknown fields
    assert decode_agent_to_server(theirs.SerializeToString(), max_bytes=MAX) == msg


# --- constants ----------------------------------------------------------------------------


CONSTANT_PREFIXES = {
    "AGENT_FLAG_": "AgentToServerFlags",
    "SERVER_FLAG_": "ServerToAgentFlags",
    "AGENT_": "AgentCapabilities",
    "SERVER_": "ServerCapabilities",
    "ERROR_": "ServerErrorResponseType",
}
SPELLING = {"OPAMP": "OpAMP", "UID": "Uid"}


def _expected(name: str) -> int | None:
    if name in {"SERVER_CAPABILITIES_MASK", "DEFAULT_MAX_MESSAGE_BYTES"}:
        return None
    if name.startswith("REMOTE_CONFIG_"):
        return int(getattr(pb, "RemoteConfigStatuses_" + name.removeprefix("REMOTE_CONFIG_")))
    for prefix, enum_name in CONSTANT_PREFIXES.items():
        if name.startswith(prefix):
            words = name.removeprefix(prefix).split("_")
            camel = "".join(SPELLING.get(w, w.capitalize()) for w in words)
            return int(getattr(pb, f"{enum_name}_{camel}"))
    raise AssertionError(name)


def test_constants_match_generated_enums() -> None:
    names = [n for n in protocol.__all__ if n.isupper() and n != "DEFAULT_SERVER_CAPABILITIES"]
    assert len(names) > 30
    for name in names:
        expected = _expected(name)
        if expected is not None:
            assert getattr(protocol, name) == expected, name
    assert protocol.SERVER_CAPABILITIES_MASK == sum(
        v.number for v in pb.ServerCapabilities.DESCRIPTOR.values
    )
    assert protocol.DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert protocol.ERROR_BAD_REQUEST == pb.ServerErrorResponseType_BadRequest
