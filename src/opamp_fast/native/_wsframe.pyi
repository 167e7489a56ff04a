"""Type stub for the compiled :mod:`opamp_fast.native._wsframe` (mirrors ``_wsframe_py``)."""

from typing import Final

from typing_extensions import disjoint_base

from ._wsframe_py import FrameError as FrameError

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

@disjoint_base
class FrameReader:
    def __init__(self, max_message_bytes: int) -> None: ...
    def feed(self, data: bytes) -> list[tuple[int, bytes]]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def closed(self) -> bool: ...

def parse_close(payload: bytes) -> tuple[int, str]: ...
def encode_frame(opcode: int, payload: bytes = b"") -> bytes: ...
def encode_close(code: int, reason: str = "") -> bytes: ...
def encode_opamp(payload: bytes) -> bytes: ...
