"""WebSocket message framing: a varint header (always 0) in front of the protobuf.

Wire form (opamp-spec, "WebSocket Message Format"): ``header`` (unsigned varint, currently
always 0, so the single byte ``0x00``) followed by the encoded message. Frames written by
agents predating the header (2023) carry the bare protobuf.

Telling them apart is unambiguous: a protobuf message starts with a field tag
``(field_number << 3) | wire_type``. Field number 0 is invalid, so a valid message never
starts with ``0x00``..``0x07``. Hence:

* ``0x00``: the header; varint 0 is exactly one byte, strip it.
* ``0x01``..``0x07``: can only be a non-zero header (a field-0 tag is invalid protobuf) ->
  ``RemoteProtocolError(kind="bad_header")``.
* anything else: a legacy header-less frame, returned unchanged.
"""

from __future__ import annotations

from ._errors import RemoteProtocolError

__all__ = ["decode_ws_payload", "encode_ws_frame"]

_HEADER = b"\x00"


def decode_ws_payload(frame: bytes) -> bytes:
    """Return the protobuf payload of a binary WebSocket frame.

    An empty frame yields ``b""`` (the decoder then rejects the missing ``instance_uid``).

    Raises:
        RemoteProtocolError: ``kind="bad_header"`` for a non-zero header.
    """
    if not frame:
        return b""
    first = frame[0]
    if first == 0:
        return frame[1:]
    if first < 8:
        raise RemoteProtocolError(
            f"non-zero WebSocket message header (first byte 0x{first:02x})", kind="bad_header"
        )
    return frame


def encode_ws_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with the varint-0 header."""
    return _HEADER + payload
