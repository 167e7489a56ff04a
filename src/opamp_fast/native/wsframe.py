"""Server side of RFC 6455 WebSocket framing: read client frames, encode server frames.

The compiled ``_wsframe`` when built, else the twin ``_wsframe_py`` (``_select.pick``). Both
apply the same rules in the same order and raise the same ``FrameError`` class; the twin's
docstring pins the semantics.
``encode_client_frame`` (masked client frames, valid or not) is always the Python one: it
is for tests and load generators, never the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._select import NO_EXTENSIONS, pick
from ._wsframe_py import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    encode_client_frame,
)

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "NO_EXTENSIONS",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "USING_EXTENSION",
    "FrameError",
    "FrameReader",
    "encode_client_frame",
    "encode_close",
    "encode_frame",
    "encode_opamp",
    "parse_close",
]

USING_EXTENSION: bool

if TYPE_CHECKING:
    from ._wsframe_py import FrameReader, encode_close, encode_frame, encode_opamp, parse_close
else:
    _impl, USING_EXTENSION = pick("_wsframe", "_wsframe_py", "frame codec")
    FrameReader = _impl.FrameReader
    encode_close = _impl.encode_close
    encode_frame = _impl.encode_frame
    encode_opamp = _impl.encode_opamp
    parse_close = _impl.parse_close
