"""End-to-end cost of one heartbeat inside the server, without sockets (pytest-benchmark).

What is timed is what the server does per WebSocket heartbeat once the bytes are read:

* ``on_message``: ``FleetHandler.on_message`` on a decoded heartbeat, through the real
  ``Registry`` (timing-wheel refresh), the sans-IO core (``process_message``) and the real
  ``BatchWriter.seen`` (a dict write): the full path, taken by any message that is not a plain
  heartbeat of a settled agent;
* ``on_heartbeat``: the fast path of the same heartbeat (scanned, not decoded);
* ``frame``: a masked client frame fed to the sans-IO ``OpAMPConnection`` (frame parse and
  unmask in Cython, heartbeat scan, fast path, reply frame written): everything but the
  syscalls and the event loop.

The fleet size (1k vs 100k agents already registered) shows the cost does not grow with the
fleet. Run: ``python -m pytest benchmarks/bench_registry.py --benchmark-only``
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from opamp_fast.fleet.handler import FleetHandler
from opamp_fast.fleet.registry import Registry
from opamp_fast.native.wsframe import OP_BINARY, encode_client_frame
from opamp_fast.protocol import ServerPolicy, pb
from opamp_fast.storage.batch_writer import BatchWriter
from opamp_fast.transport import Limits, OpAMPConnection, TransportStats

CAPS = 0x3907
UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _full_state(uid: bytes) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=0, capabilities=CAPS)
    kv = msg.agent_description.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "checkout"
    msg.health.healthy = True
    return msg


def _frame(msg: pb.AgentToServer) -> bytes:
    return encode_client_frame(
        OP_BINARY, b"\x00" + msg.SerializeToString(), mask=b"\x01\x02\x03\x04"
    )


def _fleet(size: int) -> tuple[FleetHandler, OpAMPConnection, bytes, list[bytes]]:
    """``size`` agents connected over sans-IO WebSockets; the last one's connection and uid."""
    registry = Registry(timeout_s=60.0, timeout_factor=2.5, tick_s=1.0, start_mono=time.monotonic())
    writer = BatchWriter(None, instance_id="bench")  # type: ignore[arg-type]  # never flushed
    fleet = FleetHandler(registry=registry, sink=writer, policy=ServerPolicy())
    limits = Limits(handler=fleet, stats=TransportStats())
    out: list[bytes] = []
    conn: OpAMPConnection | None = None
    uid = b""
    for _ in range(size):
        uid = os.urandom(16)
        conn = OpAMPConnection(limits, "127.0.0.1:40000", out.append, 0.0)
        conn.receive_data(UPGRADE, 0.0)
        conn.receive_data(_frame(_full_state(uid)), 0.0)
    assert conn is not None and registry.online_count == size
    out.clear()
    return fleet, conn, uid, out


def _run(
    size: int, body: Callable[[FleetHandler, OpAMPConnection, bytes, list[bytes]], Any]
) -> Any:
    return body(*_fleet(size))


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_on_message_heartbeat(benchmark: Any, fleet_size: int) -> None:
    """Handler, full path: registry lookup, wheel refresh, core merge + reply, writer.seen."""

    def body(fleet: FleetHandler, conn: OpAMPConnection, uid: bytes, out: list[bytes]) -> None:
        seq = iter(range(1, 10**9))

        def one() -> pb.ServerToAgent:
            return fleet.on_message(
                conn, pb.AgentToServer(instance_uid=uid, sequence_num=next(seq), capabilities=CAPS)
            )

        reply = benchmark(one)
        assert reply.instance_uid == uid and not reply.flags

    _run(fleet_size, body)


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_on_heartbeat_fast_path(benchmark: Any, fleet_size: int) -> None:
    def body(fleet: FleetHandler, conn: OpAMPConnection, uid: bytes, out: list[bytes]) -> None:
        # One heartbeat on the full path first: the full state's reply carried an offer
        # (connection settings), after which the session is settled.
        fleet.on_message(
            conn, pb.AgentToServer(instance_uid=uid, sequence_num=1, capabilities=CAPS)
        )
        seq = iter(range(2, 10**9))

        def one() -> bytes | None:
            return fleet.on_heartbeat(conn, uid, next(seq), CAPS)

        reply = benchmark(one)
        assert reply is not None and pb.ServerToAgent.FromString(reply).instance_uid == uid

    _run(fleet_size, body)


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_frame_to_frame_heartbeat(benchmark: Any, fleet_size: int) -> None:
    """What the transport does per heartbeat minus the event loop: frame in, reply frame out."""

    def body(fleet: FleetHandler, conn: OpAMPConnection, uid: bytes, out: list[bytes]) -> None:
        frames = [
            _frame(pb.AgentToServer(instance_uid=uid, sequence_num=n, capabilities=CAPS))
            for n in range(1, 200_001)
        ]
        feed = iter(frames)

        def one() -> None:
            conn.receive_data(next(feed), 1.0)

        benchmark.pedantic(one, rounds=50, iterations=2000, warmup_rounds=1)
        assert out and out[-1][2:3] == b"\x00" and fleet.heartbeats_total >= 100_000

    _run(fleet_size, body)
