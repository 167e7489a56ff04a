"""WebSocket framing: the varint-0 header, legacy header-less frames, bad headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_fast.protocol import (
    RemoteProtocolError,
    decode_agent_to_server,
    decode_ws_payload,
    encode_ws_frame,
    pb,
)

UID = bytes(range(16))


def test_encode_prefixes_zero_header() -> None:
    assert encode_ws_frame(b"abc") == b"\x00abc"
    assert encode_ws_frame(b"") == b"\x00"


def test_decode_strips_zero_header() -> None:
    assert decode_ws_payload(b"\x00abc") == b"abc"
    assert decode_ws_payload(b"\x00") == b""


def test_empty_frame_yields_empty_payload_which_the_decoder_rejects() -> None:
    assert decode_ws_payload(b"") == b""
    with pytest.raises(RemoteProtocolError) as exc:
        decode_agent_to_server(decode_ws_payload(b"\x00"), max_bytes=1024)
    assert exc.value.kind == "empty"


def test_legacy_frame_without_header_is_returned_as_is() -> None:
    payload = pb.AgentToServer(instance_uid=UID, capabilities=1).SerializeToString()
    assert payload[0] == 0x0A  # field 1, wire type 2
    assert decode_ws_payload(payload) is payload
    assert decode_agent_to_server(decode_ws_payload(payload), max_bytes=1024).instance_uid == UID


@pytest.mark.parametrize("first", range(1, 8))
def test_non_zero_header_is_rejected(first: int) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        decode_ws_payload(bytes([first]) + b"\x0a\x00")
    err = exc.value
    assert err.kind == "bad_header"
    assert err.close_code_hint == 1002
    assert f"0x{first:02x}" in str(err)


@pytest.mark.parametrize("first", range(8, 256))
def test_every_other_first_byte_is_a_legacy_frame(first: int) -> None:
    frame = bytes([first, 1, 2])
    assert decode_ws_payload(frame) == frame


@given(st.binary())
def test_roundtrip(payload: bytes) -> None:
    assert decode_ws_payload(encode_ws_frame(payload)) == payload


@given(
    st.builds(
        pb.AgentToServer,
        instance_uid=st.binary(min_size=1, max_size=32),
        sequence_num=st.integers(0, 2**64 - 1),
        capabilities=st.integers(0, 2**64 - 1),
        flags=st.integers(0, 2**64 - 1),
    )
)
def test_protobuf_never_starts_like_a_header(msg: pb.AgentToServer) -> None:
    payload = msg.SerializeToString()
    assert payload[0] >= 8  # so legacy and framed forms cannot be confused
    assert decode_ws_payload(payload) == payload
    assert decode_ws_payload(encode_ws_frame(payload)) == payload
