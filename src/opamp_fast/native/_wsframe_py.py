"""Pure-Python twin of :mod:`opamp_fast.native._wsframe`: the server side of RFC 6455 framing.

``FrameReader`` turns bytes received from a WebSocket *client* into complete messages and
control frames; ``encode_*`` build unmasked server frames.  The compiled module implements
the same rules in the same order, so both give the same events and raise the same
``FrameError`` (code and reason) for any byte stream, however it is split into chunks.

Pinned semantics of ``FrameReader.feed``:

* Checks run in a fixed order, each as soon as the bytes it needs have arrived, so the first
  violation in a stream is found at the same byte whatever the chunk boundaries.  Once the
  first two bytes of a frame are in: reserved bits, reserved opcode, control frame not final,
  control frame over 125 bytes, unmasked frame, continuation without a message in progress,
  new TEXT/BINARY frame inside a fragmented message.  Once the whole header is in:
  non-minimal or 64-bit-MSB length (1002), message over ``max_message_bytes`` (1009), too
  many fragments (1008).  Once the whole frame is in: the close payload (``parse_close``).
* A message may consist of at most ``16 + received // 256`` frames, ``received`` being the
  payload bytes of its earlier frames; a header that would exceed that fails with 1008.
* ``feed`` raises at the first violation; events completed earlier *in the same call* are
  dropped with it (the connection is being failed).  The reader is then failed: every later
  ``feed`` raises the same ``FrameError`` again, and ``buffered`` is 0.
* After a close frame (returned as the last event of its call) ``closed`` is true, bytes
  after it and in later calls are ignored, and ``buffered`` is 0.
* ``buffered`` counts the raw bytes of the incomplete frame at the end of the input (header
  included) plus the unmasked payload of the earlier frames of an incomplete fragmented
  message.

Bytes-like arguments other than ``bytes`` are copied to ``bytes`` first.
"""

from __future__ import annotations

from operator import index
from typing import Final, NoReturn

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "FrameReader",
    "encode_client_frame",
    "encode_close",
    "encode_frame",
    "encode_opamp",
    "parse_close",
]

OP_CONTINUATION: Final = 0
OP_TEXT: Final = 1
OP_BINARY: Final = 2
OP_CLOSE: Final = 8
OP_PING: Final = 9
OP_PONG: Final = 10

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_INVALID_DATA: Final = 1007
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL: Final = 1011

_NO_STATUS = 1005  # reported for an empty close payload; never sent on the wire
_MAX_CONTROL = 125
_MAX_REASON = _MAX_CONTROL - 2
_MAX_LIMIT = 1 << 62  # upper bound of max_message_bytes (keeps C sizes far from overflow)
_FREE_FRAGMENTS = 16
_BYTES_PER_FRAGMENT = 256
_SENDABLE = frozenset((OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))


class FrameError(Exception):
    """A violation by the client.

    Attributes:
        code: the close code the server must send (1002, 1007, 1008 or 1009).
        reason: a short ASCII text (at most 100 characters) for the close frame and logs.
    """

    code: int
    reason: str

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (close code {self.code})"


def _as_bytes(data: object) -> bytes:
    # memoryview() rejects non-buffers (int, str, list) with TypeError, unlike bytes().
    return bytes(memoryview(data))  # type: ignore[arg-type]


def _unmask(data: bytes | bytearray, key: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    n = len(data)
    if not n:
        return b""
    mask = (key * ((n + 3) >> 2))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")
    return value.to_bytes(n, "little")


def _header(b0: int, b1: int, n: int) -> bytes:
    """Frame header with the minimal length encoding; ``b1`` carries the mask bit."""
    if n < 126:
        return bytes((b0, b1 | n))
    if n < 65536:
        return bytes((b0, b1 | 126)) + n.to_bytes(2, "big")
    return bytes((b0, b1 | 127)) + n.to_bytes(8, "big")


def _close_code_ok(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 7.4, IANA)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Return ``(code, reason)`` of a close frame payload; ``(1005, "")`` when it is empty.

    Raises:
        FrameError: 1002 for a 1-byte payload or a code that may not be sent on the wire,
            1007 when the reason is not valid UTF-8.
    """
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    n = len(payload)
    if n == 0:
        return _NO_STATUS, ""
    if n == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if not _close_code_ok(code):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None
    return code, reason


def encode_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, unmasked (server) frame.

    Raises:
        ValueError: ``opcode`` is not TEXT, BINARY, CLOSE, PING or PONG, or a control frame
            payload is over 125 bytes.
    """
    opcode = index(opcode)
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    if opcode not in _SENDABLE:
        raise ValueError(f"cannot send opcode {opcode}")
    if opcode >= OP_CLOSE and len(payload) > _MAX_CONTROL:
        raise ValueError("control frame payload over 125 bytes")
    return _header(0x80 | opcode, 0, len(payload)) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; ``reason`` is UTF-8 encoded and cut on a character boundary to fit.

    Raises:
        ValueError: ``code`` may not be sent on the wire (see ``parse_close``).
    """
    code = index(code)
    if not isinstance(reason, str):
        raise TypeError(f"reason must be str, not {type(reason).__name__}")
    if not _close_code_ok(code):
        raise ValueError(f"cannot send close code {code}")
    data = reason.encode("utf-8")
    if len(data) > _MAX_REASON:
        cut = _MAX_REASON
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: back off to its lead byte
            cut -= 1
        data = data[:cut]
    return bytes((0x80 | OP_CLOSE, 2 + len(data), code >> 8, code & 0xFF)) + data


def encode_opamp(payload: bytes) -> bytes:
    """A final unmasked binary frame carrying the OpAMP header byte 0x00 and ``payload``."""
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    return _header(0x80 | OP_BINARY, 0, len(payload) + 1) + b"\x00" + payload


def encode_client_frame(
    opcode: int,
    payload: bytes,
    *,
    mask: bytes = b"\x00\x00\x00\x00",
    fin: bool = True,
    rsv: int = 0,
) -> bytes:
    """A masked client frame, valid or not (for tests and load generators only).

    Any opcode 0..15 and RSV bits 0..7 are accepted; the length uses the minimal encoding
    and nothing else is checked, so invalid frames can be crafted on purpose.
    """
    opcode = index(opcode)
    rsv = index(rsv)
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    if type(mask) is not bytes:
        mask = _as_bytes(mask)
    if not 0 <= opcode <= 15:
        raise ValueError("opcode must be in 0..15")
    if not 0 <= rsv <= 7:
        raise ValueError("rsv must be in 0..7")
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    return _header(b0, 0x80, len(payload)) + mask + _unmask(payload, mask)


class FrameReader:
    """Incremental reader of the frames a WebSocket client sends (see the module docstring)."""

    __slots__ = ("_buf", "_closed", "_error", "_max", "_msg", "_msg_frames", "_msg_op", "_need")

    def __init__(self, max_message_bytes: int) -> None:
        limit = index(max_message_bytes)
        if not 0 <= limit <= _MAX_LIMIT:
            raise ValueError("max_message_bytes must be in 0..2**62")
        self._max = limit
        self._buf = bytearray()  # raw bytes of the incomplete frame at the end of the input
        self._need = 2  # len(_buf) at which parsing can make progress again
        self._msg = bytearray()  # unmasked payload of a fragmented message so far
        self._msg_op = 0  # OP_TEXT/OP_BINARY while a fragmented message is in progress
        self._msg_frames = 0
        self._closed = False
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame plus the payload of an incomplete message."""
        return len(self._buf) + len(self._msg)

    @property
    def closed(self) -> bool:
        """True once a close frame was returned; later bytes are ignored."""
        return self._closed

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume bytes from the client; return the complete messages and control frames.

        Data messages come as ``(OP_TEXT or OP_BINARY, payload)`` with the fragments joined,
        control frames as ``(OP_PING, OP_PONG or OP_CLOSE, payload)``, in arrival order.

        Raises:
            FrameError: at the first violation, and again on every later call.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._closed:
            return []
        if type(data) is not bytes:
            data = _as_bytes(data)
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return out
            pos = self._parse(buf, out)
            del buf[:pos]
        else:
            pos = self._parse(data, out)
            if pos < len(data):
                buf += memoryview(data)[pos:]
        if self._closed:
            buf.clear()
            self._msg = bytearray()
        return out

    def _fail(self, exc: FrameError) -> NoReturn:
        self._error = exc
        self._buf = bytearray()
        self._msg = bytearray()
        raise exc

    def _parse(self, src: bytes | bytearray, out: list[tuple[int, bytes]]) -> int:
        """Process the complete frames at the start of ``src``; return the bytes consumed."""
        pos = 0
        end = len(src)
        while True:
            avail = end - pos
            if avail < 2:
                self._need = 2
                return pos
            b0 = src[pos]
            b1 = src[pos + 1]
            op = b0 & 0x0F
            n = b1 & 0x7F
            if b0 & 0x70:
                self._fail(FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set"))
            if 2 < op < 8 or op > 10:
                self._fail(FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {op}"))
            if op >= 8:
                if not b0 & 0x80:
                    self._fail(FrameError(CLOSE_PROTOCOL_ERROR, "fragmented control frame"))
                if n > _MAX_CONTROL:
                    self._fail(
                        FrameError(CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes")
                    )
            if not b1 & 0x80:
                self._fail(FrameError(CLOSE_PROTOCOL_ERROR, "unmasked client frame"))
            if op == 0:
                if not self._msg_op:
                    self._fail(
                        FrameError(
                            CLOSE_PROTOCOL_ERROR,
                            "continuation frame without a message in progress",
                        )
                    )
            elif op < 8 and self._msg_op:
                self._fail(
                    FrameError(CLOSE_PROTOCOL_ERROR, "new data frame inside a fragmented message")
                )
            hlen = 6 if n < 126 else 8 if n == 126 else 14
            if avail < hlen:
                self._need = hlen
                return pos
            if n == 126:
                n = (src[pos + 2] << 8) | src[pos + 3]
                if n < 126:
                    self._fail(FrameError(CLOSE_PROTOCOL_ERROR, "non-minimal payload length"))
            elif n == 127:
                n = int.from_bytes(src[pos + 2 : pos + 10], "big")
                if n >> 63:
                    self._fail(
                        FrameError(
                            CLOSE_PROTOCOL_ERROR, "64-bit payload length with the high bit set"
                        )
                    )
                if n < 65536:
                    self._fail(FrameError(CLOSE_PROTOCOL_ERROR, "non-minimal payload length"))
            if op < 8:
                received = len(self._msg)
                if n > self._max - received:
                    self._fail(FrameError(CLOSE_TOO_BIG, "message too big"))
                if op == 0 and self._msg_frames >= (
                    _FREE_FRAGMENTS + received // _BYTES_PER_FRAGMENT
                ):
                    self._fail(FrameError(CLOSE_POLICY, "too many fragments"))
            total = hlen + n
            if avail < total:
                self._need = total
                return pos
            start = pos + hlen
            payload = _unmask(src[start : start + n], src[start - 4 : start])
            pos += total
            if op >= 8:
                if op == OP_CLOSE:
                    try:
                        parse_close(payload)
                    except FrameError as exc:
                        self._fail(exc)
                    out.append((op, payload))
                    self._closed = True
                    return pos
                out.append((op, payload))
            elif b0 & 0x80:
                if op:
                    out.append((op, payload))
                else:
                    msg = self._msg
                    msg += payload
                    out.append((self._msg_op, bytes(msg)))
                    self._msg = bytearray()
                    self._msg_op = 0
                    self._msg_frames = 0
            else:
                if op:
                    self._msg_op = op
                    self._msg_frames = 1
                else:
                    self._msg_frames += 1
                self._msg += payload
