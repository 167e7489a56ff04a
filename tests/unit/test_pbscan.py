"""The heartbeat scanner (``pbscan``): Cython and Python twins, checked against protobuf (upb).

The invariant: whenever the scanner answers ``(uid, seq, caps)``, protobuf decodes the same
bytes to a message holding exactly those values and nothing else; and for every canonical
encoding of such a message the scanner does answer (it is not allowed to miss heartbeats).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opamp_fast.native import _pbscan_py, pbscan
from opamp_fast.protocol import pb

IMPLEMENTATIONS = [pytest.param(_pbscan_py.parse_heartbeat, id="python")]
if pbscan.USING_EXTENSION:
    from opamp_fast.native import _pbscan

    IMPLEMENTATIONS.append(pytest.param(_pbscan.parse_heartbeat, id="cython"))

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
UID = os.urandom(16)


def test_extension_loaded() -> None:
    """CI builds the extension: a silent fallback to Python would hide a build problem."""
    if os.environ.get("OPAMP_FAST_NO_EXTENSIONS"):
        assert pbscan.USING_EXTENSION is False
    else:
        assert pbscan.USING_EXTENSION is True


def test_no_extensions_falls_back_to_python() -> None:
    code = "from opamp_fast.native import pbscan, _pbscan_py\n"
    code += "assert pbscan.parse_heartbeat is _pbscan_py.parse_heartbeat\n"
    env = {**os.environ, "OPAMP_FAST_NO_EXTENSIONS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("parse", IMPLEMENTATIONS)
def test_heartbeat_fields(parse) -> None:
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=300, capabilities=0x3907)
    data = msg.SerializeToString()
    assert parse(data) == (UID, 300, 0x3907)
    assert parse(b"\x00" + data, 1) == (UID, 300, 0x3907)
    assert parse(pb.AgentToServer(instance_uid=UID).SerializeToString()) == (UID, 0, 0)


@pytest.mark.parametrize("parse", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "msg",
    [
        pb.AgentToServer(instance_uid=UID, sequence_num=1, capabilities=1, flags=1),
        pb.AgentToServer(instance_uid=b"x" * 26, sequence_num=1, capabilities=1),  # a ULID
        pb.AgentToServer(sequence_num=1, capabilities=1),  # no uid
        pb.AgentToServer(instance_uid=UID, agent_disconnect=pb.AgentDisconnect(), capabilities=1),
        pb.AgentToServer(instance_uid=UID, agent_description=pb.AgentDescription(), capabilities=1),
    ],
)
def test_anything_else_is_not_a_heartbeat(parse, msg) -> None:
    assert parse(msg.SerializeToString()) is None


@pytest.mark.parametrize("parse", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a\x10" + UID[:15],  # truncated uid
        b"\x0a\x10" + UID + b"\x10",  # truncated varint
        b"\x0a\x10" + UID + b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # 10 bytes, ok
        b"\x0a\x10" + UID + b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",  # beyond 64 bits
        b"\x0a\x10" + UID + b"\x10\x01\x10\x02",  # a repeated scalar
        b"\x0a\x10" + UID + b"\x0a\x10" + UID,  # a repeated uid
    ],
)
def test_edge_encodings_agree_with_protobuf(parse, data) -> None:
    check_against_protobuf(parse, data)


def test_negative_start_is_refused() -> None:
    data = pb.AgentToServer(instance_uid=UID).SerializeToString()
    for parse in (p.values[0] for p in IMPLEMENTATIONS):
        assert parse(data, -1) is None


def check_against_protobuf(parse, data: bytes, start: int = 0) -> None:
    got = parse(data, start)
    try:
        msg = pb.AgentToServer.FromString(data[start:])
    except Exception:
        assert got is None, f"scanner accepted bytes protobuf refuses: {data!r}"
        return
    if got is None:
        return
    fields = {f.name for f, _ in msg.ListFields()}
    assert fields <= {"instance_uid", "sequence_num", "capabilities"}, fields
    assert got == (msg.instance_uid, msg.sequence_num, msg.capabilities)
    assert len(got[0]) == 16


@settings(max_examples=400, deadline=None)
@given(
    seq=U64,
    caps=U64,
    with_seq=st.booleans(),
    with_caps=st.booleans(),
    uid=st.binary(min_size=16, max_size=16),
)
def test_every_canonical_heartbeat_is_recognised(seq, caps, with_seq, with_caps, uid) -> None:
    msg = pb.AgentToServer(instance_uid=uid)
    if with_seq:
        msg.sequence_num = seq
    if with_caps:
        msg.capabilities = caps
    data = msg.SerializeToString()
    for param in IMPLEMENTATIONS:
        parse = param.values[0]
        assert parse(data) == (uid, msg.sequence_num, msg.capabilities)


def _field(number: int) -> st.SearchStrategy[bytes]:
    def tag(wire: int) -> bytes:
        return bytes([number << 3 | wire])

    varint = st.binary(min_size=0, max_size=11)
    length = st.binary(min_size=0, max_size=20).map(lambda b: bytes([len(b)]) + b)
    return st.one_of(
        varint.map(lambda v: tag(0) + v),
        length.map(lambda v: tag(2) + v),
        st.just(tag(2) + b"\x10" + UID),
    )


PIECES = st.lists(
    st.one_of(_field(1), _field(2), _field(4), _field(10), st.binary(min_size=0, max_size=4)),
    min_size=0,
    max_size=6,
)


@settings(max_examples=1500, deadline=None)
@given(pieces=PIECES, start=st.integers(0, 2))
def test_twins_agree_and_never_contradict_protobuf(pieces, start) -> None:
    data = b"".join(pieces)
    answers = {param.values[0](data, start) for param in IMPLEMENTATIONS}
    assert len(answers) == 1
    for param in IMPLEMENTATIONS:
        check_against_protobuf(param.values[0], data, min(start, len(data)))
