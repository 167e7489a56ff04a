"""Pure-Python twin of ``opamp_fast.native._pbscan``: recognise a heartbeat without decoding it.

A WebSocket heartbeat is an ``AgentToServer`` holding only ``instance_uid`` (field 1, 16
bytes), ``sequence_num`` (field 2) and ``capabilities`` (field 4): about 25 bytes, most of
what an agent fleet sends. Building a protobuf message object for each costs more than the
whole rest of the server's work on it, so the transport first asks :func:`parse_heartbeat`,
which reads those three fields straight from the bytes and answers ``None`` for anything else
(another field, a repeated field, a uid that is not 16 bytes, a malformed or over-long varint);
``None`` means "decode it properly", never "invalid".

Exactly the message protobuf would decode: ``tests/unit/test_pbscan.py`` checks both
implementations against upb on generated and mutated inputs.
"""

from __future__ import annotations

__all__ = ["parse_heartbeat"]

_U64 = (1 << 64) - 1


def parse_heartbeat(data: bytes, start: int = 0) -> tuple[bytes, int, int] | None:
    """``(instance_uid, sequence_num, capabilities)`` of the ``AgentToServer`` encoded in
    ``data[start:]`` when it holds nothing but those fields (each at most once, the uid present
    and 16 bytes long; absent scalars are 0), else ``None``."""
    n = len(data)
    i = start
    if i < 0:
        return None
    uid: bytes | None = None
    seq = caps = 0
    seen = 0
    while i < n:
        tag = data[i]
        i += 1
        if tag == 0x0A:  # field 1, length-delimited: instance_uid
            if seen & 1 or i >= n or data[i] != 16 or i + 17 > n:
                return None
            uid = data[i + 1 : i + 17]
            i += 17
            seen |= 1
            continue
        if tag == 0x10:  # field 2, varint: sequence_num
            bit = 2
        elif tag == 0x20:  # field 4, varint: capabilities
            bit = 4
        else:
            return None
        if seen & bit:
            return None
        seen |= bit
        value = 0
        shift = 0
        while True:
            if i >= n:
                return None
            b = data[i]
            i += 1
            if shift == 63 and b > 1:  # a 10th byte beyond 64 bits: let protobuf judge it
                return None
            value |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if bit == 2:
            seq = value & _U64
        else:
            caps = value & _U64
    if uid is None:
        return None
    return uid, seq, caps
