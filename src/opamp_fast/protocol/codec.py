"""Encoding, decoding and size limits for OpAMP messages, plus instance-uid helpers.

Sizes are those of the protobuf encoding: the transports decompress (HTTP gzip, WS
permessage-deflate) before calling the decoders and compress after calling the encoders,
which is where the spec measures the limit.
"""

from __future__ import annotations

import re

from .._proto.opamp.v1 import opamp_pb2 as pb
from ._constants import DEFAULT_MAX_MESSAGE_BYTES
from ._errors import LocalProtocolError, MessageTooLargeError, RemoteProtocolError

__all__ = [
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


def decode_agent_to_server(data: bytes, *, max_bytes: int) -> pb.AgentToServer:
    """Parse an ``AgentToServer``; the size check comes first.

    The result always has a non-empty ``instance_uid`` (its form is checked by
    :func:`normalize_instance_uid`, which the caller applies when it looks the agent up).

    Raises:
        MessageTooLargeError: ``len(data) > max_bytes``.
        RemoteProtocolError: ``kind="empty"`` for 0 bytes, ``"decode"`` for invalid
            protobuf, ``"bad_instance_uid"`` when ``instance_uid`` is missing.
    """
    size = len(data)
    if size > max_bytes:
        raise MessageTooLargeError(size, max_bytes)
    if not size:
        raise RemoteProtocolError("empty AgentToServer message", kind="empty")
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
    data: bytes = msg.SerializeToString()
    if len(data) > max_bytes:
        raise LocalProtocolError(
            f"ServerToAgent of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            kind="too_large",
        )
    return data


def encode_agent_to_server(
    msg: pb.AgentToServer, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> bytes:
    """Serialize an ``AgentToServer`` (test clients, simulator).

    Raises:
        LocalProtocolError: ``kind="too_large"`` over ``max_bytes``.
    """
    data: bytes = msg.SerializeToString()
    if len(data) > max_bytes:
        raise LocalProtocolError(
            f"AgentToServer of {len(data)} bytes exceeds the limit of {max_bytes} bytes",
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
