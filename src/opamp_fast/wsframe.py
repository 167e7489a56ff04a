"""Server side of RFC 6455 WebSocket framing: read client frames, encode server frames.

Uses the compiled ``opamp_fast._wsframe`` extension when available and the pure-Python
twin ``opamp_fast._wsframe_py`` otherwise (or when the ``OPAMP_FAST_NO_EXTENSIONS``
environment variable is set to a non-empty value).  Both apply the same rules in the same
order and raise the same ``FrameError`` class; the twin's docstring pins the semantics.
``encode_client_frame`` (masked client frames, valid or not) is always the Python one: it
is for tests and load generators, never the server.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

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

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

USING_EXTENSION: bool

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._wsframe_py import FrameReader, encode_close, encode_frame, encode_opamp, parse_close

    USING_EXTENSION = False
else:
    try:
        from ._wsframe import FrameReader, encode_close, encode_frame, encode_opamp, parse_close

        USING_EXTENSION = True
    except ImportError:  # pragma: no cover - depends on the build
        logging.getLogger(__name__).warning(
            "opamp_fast._wsframe extension not available; using the pure-Python frame codec"
        )
        from ._wsframe_py import FrameReader, encode_close, encode_frame, encode_opamp, parse_close

        USING_EXTENSION = False
