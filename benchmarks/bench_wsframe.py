"""Benchmarks for the WebSocket frame codec: Cython vs Python twin, wsproto as a reference.

Run:
    PYTHONPATH=src python -m pytest benchmarks/bench_wsframe.py --benchmark-only \
        -q -p no:cacheprovider

Each round makes ``ITERATIONS`` (or 20 for the large inputs) calls and the reported time is
per call, so the timer's own overhead (~100 ns here) does not swamp the sub-microsecond
cases.  ``feed`` benchmarks time one ``FrameReader.feed`` call on bytes as a client sends them
(masked): a 30-byte heartbeat frame, a 64 KiB frame, 100 heartbeats in one chunk.
``wsproto`` is its server-side ``FrameProtocol`` (``receive_bytes`` + ``received_frames``),
and ``wsproto-conn`` the full ``WSConnection`` after a handshake (``receive_data`` +
``events``), which is what hypercorn runs per WebSocket message.  ``encode_opamp`` builds
the server's reply frame (header byte 0x00 plus the protobuf).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import wsproto
import wsproto.events as wse
from wsproto.frame_protocol import FrameProtocol

from opamp_fast.native import _wsframe_py
from opamp_fast.native._wsframe_py import encode_client_frame

MASK = b"\x9a\x3c\x51\xe7"
HEARTBEAT = encode_client_frame(2, b"\x00" + bytes(range(1, 24)), mask=MASK)  # 30 bytes
PAYLOAD_64K = bytes(range(256)) * 256
FRAME_64K = encode_client_frame(2, PAYLOAD_64K, mask=MASK)
HUNDRED = HEARTBEAT * 100
LIMIT = 1 << 20
ITERATIONS = 200
ROUNDS = 200


def _bench(benchmark: Any, fn: Callable[..., Any], *args: Any, iterations: int = ITERATIONS) -> Any:
    return benchmark.pedantic(fn, args=args, iterations=iterations, rounds=ROUNDS, warmup_rounds=2)


class WsprotoReader:
    """wsproto's server-side frame parser behind the ``FrameReader.feed`` interface."""

    def __init__(self, max_message_bytes: int) -> None:
        self._proto = FrameProtocol(client=False, extensions=[])

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        self._proto.receive_bytes(data)
        return [(int(f.opcode), f.payload) for f in self._proto.received_frames()]


class WsprotoConnection:
    """A wsproto server ``WSConnection`` after the opening handshake."""

    def __init__(self, max_message_bytes: int) -> None:
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self._conn.receive_data(client.send(wse.Request(host="localhost", target="/v1/opamp")))
        list(self._conn.events())
        self._conn.send(wse.AcceptConnection())

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        self._conn.receive_data(data)
        return [(2, e.data) for e in self._conn.events() if isinstance(e, wse.BytesMessage)]


def _cython() -> ModuleType:
    if os.environ.get("OPAMP_FAST_NO_EXTENSIONS"):
        pytest.skip("OPAMP_FAST_NO_EXTENSIONS is set")
    try:
        return importlib.import_module("opamp_fast.native._wsframe")
    except ImportError as exc:
        pytest.fail(f"compiled opamp_fast.native._wsframe is not importable: {exc}")


CODECS: dict[str, Callable[[], ModuleType]] = {"cython": _cython, "python": lambda: _wsframe_py}
READERS: dict[str, Callable[[], type]] = {
    "cython": lambda: _cython().FrameReader,
    "python": lambda: _wsframe_py.FrameReader,
    "wsproto": lambda: WsprotoReader,
    "wsproto-conn": lambda: WsprotoConnection,
}


@pytest.fixture(params=list(CODECS))
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return CODECS[request.param]()


@pytest.fixture(params=list(READERS))
def reader_cls(request: pytest.FixtureRequest) -> type:
    return READERS[request.param]()


# -- feed ---------------------------------------------------------------------


def test_feed_heartbeat(benchmark: Any, reader_cls: type) -> None:
    """One masked 30-byte binary frame per call (an agent heartbeat)."""
    assert len(HEARTBEAT) == 30
    reader = reader_cls(LIMIT)
    events = _bench(benchmark, reader.feed, HEARTBEAT)
    assert events == [(2, b"\x00" + bytes(range(1, 24)))]


def test_feed_64k(benchmark: Any, reader_cls: type) -> None:
    """One masked 64 KiB binary frame per call (a full-state report)."""
    reader = reader_cls(LIMIT)
    events = _bench(benchmark, reader.feed, FRAME_64K, iterations=20)
    assert events == [(2, PAYLOAD_64K)]


def test_feed_100_frames(benchmark: Any, reader_cls: type) -> None:
    """100 heartbeat frames arriving in one chunk."""
    reader = reader_cls(LIMIT)
    events = _bench(benchmark, reader.feed, HUNDRED, iterations=20)
    assert len(events) == 100


# -- encode -------------------------------------------------------------------


@pytest.mark.parametrize("size", [20, 65536], ids=["20B", "64KiB"])
def test_encode_opamp(benchmark: Any, codec: ModuleType, size: int) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    frame = _bench(
        benchmark, codec.encode_opamp, payload, iterations=ITERATIONS if size < 256 else 20
    )
    assert frame[-size:] == payload


@pytest.mark.parametrize("size", [20, 65536], ids=["20B", "64KiB"])
def test_encode_opamp_wsproto(benchmark: Any, size: int) -> None:
    """Reference: wsproto's server ``send_data`` of the same message (header prepended)."""
    proto = FrameProtocol(client=False, extensions=[])
    payload = b"p" * size

    def run() -> bytearray:
        return proto.send_data(b"\x00" + payload)

    frame = _bench(benchmark, run, iterations=ITERATIONS if size < 256 else 20)
    assert bytes(frame) == _wsframe_py.encode_opamp(payload)
