"""Encoding, decoding and size limits for OpAMP messages, plus instance-uid helpers.

Sizes are those of the protobuf encoding: the transports decompress (HTTP gzip, WS
permessage-deflate) before calling the decoders and compress after calling the encoders,
which is where the spec measures the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .._proto.opamp.v1 import opamp_pb2 as pb
from ._constants import DEFAULT_MAX_MESSAGE_BYTES
from ._errors import LocalProtocolError, MessageTooLargeError, RemoteProtocolError

__all__ = [
    "STATUS_PARTS",
    "PartBounds",
    "check_part_sizes",
    "decode_agent_to_server",
    "decode_server_to_agent",
    "encode_agent_to_server",
    "encode_server_to_agent",
    "format_instance_uid",
    "normalize_instance_uid",
    "parse_instance_uid_text",
]

_AgentToServer = pb.AgentToServer
_ServerToAgent = pb.ServerToAgent


@dataclass(frozen=True, slots=True)
class PartBounds:
    """What the server keeps of one status part (``ServerPolicy``'s bounds, for the wire)."""

    description_bytes: int
    part_bytes: int
    custom_message_bytes: int = 64 * 1024  # a CustomMessage (not kept: passed on, bounded)


#: The status parts the server keeps besides the description, each bounded by
#: ``max_status_part_bytes`` (here from the wire, in ``_core.check_bounds`` after decoding).
STATUS_PARTS: Final = (
    "health",
    "effective_config",
    "remote_config_status",
    "package_statuses",
    "custom_capabilities",
    "available_components",
    "connection_settings_status",
)
#: Every kept part by ``AgentToServer`` field number.
_KEPT_PARTS: Final = {
    pb.AgentToServer.DESCRIPTOR.fields_by_name[name].number: name
    for name in ("agent_description", *STATUS_PARTS)
}
_DESCRIPTION_FIELD: Final = pb.AgentToServer.DESCRIPTOR.fields_by_name["agent_description"].number
_CUSTOM_MESSAGE_FIELD: Final = pb.AgentToServer.DESCRIPTOR.fields_by_name["custom_message"].number
_BOUNDED_PARTS: Final = {**_KEPT_PARTS, _CUSTOM_MESSAGE_FIELD: "custom_message"}
#: Top-level fields looked at before giving the message to the decoder. A real agent writes
#: each field once (about 15 in all); a message built to exceed this is decoded as before.
_SCAN_FIELDS: Final = 256


def check_part_sizes(data: bytes, bounds: PartBounds) -> None:
    """Refuse, from the wire, a message whose kept status parts exceed ``bounds``: a 40 MB
    description is refused after reading a few field headers instead of after a decode of
    hundreds of milliseconds on the event loop.

    Only messages larger than the smallest bound are looked at (everything an agent sends
    routinely is smaller). Repeated occurrences of a field, which protobuf merges, are added
    up. Anything this scan does not understand (bad varints, groups, more than
    ``_SCAN_FIELDS`` fields) is left to the decoder and to ``check_bounds`` after it.

    Raises:
        RemoteProtocolError: ``kind="too_large_state"``, as ``check_bounds`` would.
    """
    n = len(data)
    if n <= min(bounds.description_bytes, bounds.part_bytes, bounds.custom_message_bytes):
        return
    sizes: dict[int, int] = {}
    i = 0
    for _ in range(_SCAN_FIELDS):
        if i >= n:
            return
        key, i = _varint(data, i, n)
        wire_type = key & 7
        length = 0
        if i < 0:
            return  # not a varint: the decoder says what is wrong
        if wire_type == 0:
            _, i = _varint(data, i, n)
        elif wire_type == 1:
            length = 8
        elif wire_type == 5:
            length = 4
        elif wire_type == 2:
            length, i = _varint(data, i, n)
            field = key >> 3
            if i < 0 or i + length > n:
                return  # truncated: the decoder says so
            if field in _BOUNDED_PARTS:
                size = sizes[field] = sizes.get(field, 0) + length
                bound = _bound_of(field, bounds)
                if size > bound:
                    raise RemoteProtocolError(
                        f"{_BOUNDED_PARTS[field]} of {size} bytes exceeds what the server keeps "
                        f"({bound} bytes)",
                        kind="too_large_state",
                    )
        else:
            return  # groups (3, 4) or an invalid wire type: the decoder decides
        if i < 0:
            return
        i += length


def _bound_of(field: int, bounds: PartBounds) -> int:
    if field == _DESCRIPTION_FIELD:
        return bounds.description_bytes
    if field == _CUSTOM_MESSAGE_FIELD:
        return bounds.custom_message_bytes
    return bounds.part_bytes


def _varint(data: bytes, i: int, n: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and the index after it; (0, -1) when there is none."""
    value = shift = 0
    while i < n and shift < 64:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    return 0, -1


def decode_agent_to_server(
    data: bytes, *, max_bytes: int, part_bounds: PartBounds | None = None
) -> pb.AgentToServer:
    """Parse an ``AgentToServer``; the size checks come first.

    The result always has a non-empty ``instance_uid`` (its form is checked by
    :func:`normalize_instance_uid`, which the caller applies when it looks the agent up).
    With ``part_bounds``, a message whose kept status parts are over them is refused before
    the decode (:func:`check_part_sizes`).

    Raises:
        MessageTooLargeError: ``len(data) > max_bytes``.
        RemoteProtocolError: ``kind="empty"`` for 0 bytes, ``"decode"`` for invalid
            protobuf, ``"bad_instance_uid"`` when ``instance_uid`` is missing,
            ``"too_large_state"`` for a status part over ``part_bounds``.
    """
    size = len(data)
    if size > max_bytes:
        raise MessageTooLargeError(size, max_bytes)
    if not size:
        raise RemoteProtocolError("empty AgentToServer message", kind="empty")
    if part_bounds is not None:
        check_part_sizes(data, part_bounds)
    msg = _AgentToServer()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # DecodeError, and anything else the parser may raise
        raise RemoteProtocolError(
            f"cannot decode AgentToServer ({size} bytes): {exc}", kind="decode"
        ) from exc
    if not msg.instance_uid:
        raise RemoteProtocolError("AgentToServer without instance_uid", kind="bad_instance_uid")
    return msg


def encode_server_to_agent(msg: pb.ServerToAgent, *, max_bytes: int) -> bytes:
    """Serialize a ``ServerToAgent``.

    Raises:
        LocalProtocolError: ``kind="too_large"`` when the encoding exceeds ``max_bytes``;
            the message MUST NOT be sent.
    """
    return _encode(msg, max_bytes)


def encode_agent_to_server(
    msg: pb.AgentToServer, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> bytes:
    """Serialize an ``AgentToServer`` (test clients, simulator).

    Raises:
        LocalProtocolError: ``kind="too_large"`` over ``max_bytes``.
    """
    return _encode(msg, max_bytes)


def _encode(msg: pb.ServerToAgent | pb.AgentToServer, max_bytes: int) -> bytes:
    data: bytes = msg.SerializeToString()
    if len(data) > max_bytes:
        raise LocalProtocolError(
            f"{type(msg).__name__} of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            kind="too_large",
        )
    return data


def decode_server_to_agent(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> pb.ServerToAgent:
    """Parse a ``ServerToAgent`` (test clients, simulator). 0 bytes is a valid empty message.

    Raises:
        MessageTooLargeError: over ``max_bytes``.
        RemoteProtocolError: ``kind="decode"`` for invalid protobuf.
    """
    size = len(data)
    if size > max_bytes:
        raise MessageTooLargeError(size, max_bytes)
    msg = _ServerToAgent()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        raise RemoteProtocolError(
            f"cannot decode ServerToAgent ({size} bytes): {exc}", kind="decode"
        ) from exc
    return msg


# --- instance uids ---------------------------------------------------------------------

# Crockford base32 as used by ULID (no I, L, O, U); 26 chars = 130 bits, so the first
# char is at most "7". Translated to Python's base-32 digits (0-9a-v) for int(..., 32).
_ULID_RE = re.compile(rb"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)
_CROCKFORD = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_BASE32HEX = b"0123456789abcdefghijklmnopqrstuv"
_ULID_TO_B32HEX = bytes.maketrans(_CROCKFORD + _CROCKFORD.lower(), _BASE32HEX * 2)
_UUID_BYTES_RE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_UUID_TEXT_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}",
    re.ASCII,
)


def normalize_instance_uid(raw: bytes) -> bytes:
    """Return the 16-byte form of an ``instance_uid`` as sent on the wire.

    * 16 bytes: returned as is (spec >= v0.10).
    * 26 ASCII bytes of Crockford base32: a ULID (spec < v0.10); its 128-bit value.
    * 36 ASCII bytes of a canonical UUID string: its 16 bytes.

    Raises:
        RemoteProtocolError: ``kind="bad_instance_uid"`` for anything else (incl. empty).
    """
    n = len(raw)
    if n == 16:
        return raw
    if n == 26 and _ULID_RE.fullmatch(raw):
        return int(raw.translate(_ULID_TO_B32HEX), 32).to_bytes(16, "big")
    if n == 36 and _UUID_BYTES_RE.fullmatch(raw):
        return bytes.fromhex(raw.replace(b"-", b"").decode("ascii"))
    raise RemoteProtocolError(
        f"instance_uid must be 16 bytes (or a 26-char ULID), got {n} bytes",
        kind="bad_instance_uid",
    )


def format_instance_uid(uid16: bytes) -> str:
    """The canonical lowercase UUID string of a 16-byte uid (REST API, logs).

    Raises:
        ValueError: ``uid16`` is not 16 bytes.
    """
    if len(uid16) != 16:
        raise ValueError(f"instance uid must be 16 bytes, got {len(uid16)}")
    h = uid16.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_instance_uid_text(s: str) -> bytes:
    """Parse a canonical UUID string or 32 hex digits (either case) into 16 bytes.

    Raises:
        ValueError: any other form.
    """
    if not _UUID_TEXT_RE.fullmatch(s):
        raise ValueError(f"not a UUID: {s!r}")
    return bytes.fromhex(s.replace("-", ""))
