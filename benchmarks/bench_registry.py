"""End-to-end cost of one heartbeat inside the server, without sockets (pytest-benchmark).

What is timed is what the server does per WebSocket heartbeat after hypercorn hands over the
bytes: ``FleetHandler.on_message`` through the real ``Registry`` (timing-wheel refresh), the
sans-IO core (``process_message``) and the real ``BatchWriter.seen`` (a dict write), and, in the
``frame`` variant, also the framing + protobuf decode before and the encode after. The fleet
size (1k vs 100k agents already registered) shows the cost does not grow with the fleet.

The load runs (``docs/performance.md``, "Scale") measure ~10x more CPU per message than this:
the difference is hypercorn, ASGI, trio task switches and the socket, not the OpAMP logic.

Run: ``PYTHONPATH=src python -m pytest benchmarks/bench_registry.py --noconftest -q``

A heartbeat never awaits anything (no status change, no transition), so each iteration drives
the ``on_message`` coroutine by hand with ``send(None)``; it runs inside ``trio.run`` because the
handler reads ``trio.current_time()``. The writer's channel is never drained here: it is sized to
hold the connect events of the set-up fleet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio

from opamp_fast.fleet import FleetHandler
from opamp_fast.protocol import (
    ServerPolicy,
    Transport,
    decode_agent_to_server,
    decode_ws_payload,
    encode_server_to_agent,
    encode_ws_frame,
    pb,
)
from opamp_fast.registry import Registry
from opamp_fast.storage.batch_writer import BatchWriter
from opamp_fast.transport.connection import Connection

MAX = 64 * 1024 * 1024
CAPS = 0x3907


async def _discard(message: dict[str, Any]) -> None:
    return None


def _full_state(uid: bytes) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=0, capabilities=CAPS)
    kv = msg.agent_description.identifying_attributes.add()
    kv.key = "service.name"
    kv.value.string_value = "checkout"
    msg.health.healthy = True
    return msg


def _drive(coro: Any) -> Any:
    """Run a coroutine that must not suspend; return its value."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("a heartbeat suspended: it should never await")


async def _fleet(size: int) -> tuple[FleetHandler, Connection, bytes]:
    registry = Registry(
        timeout_s=60.0, timeout_factor=2.5, tick_s=1.0, start_mono=trio.current_time()
    )
    writer = BatchWriter(None, instance_id="bench", queue_max=size + 16)  # type: ignore[arg-type]
    fleet = FleetHandler(registry=registry, sink=writer, policy=ServerPolicy())
    conn: Connection | None = None
    uid = b""
    for _ in range(size):
        uid = os.urandom(16)
        conn = Connection(Transport.WS, "127.0.0.1:40000", send=_discard, max_message_bytes=MAX)
        await fleet.on_connected(conn)
        await fleet.on_message(conn, _full_state(uid))
    assert conn is not None and registry.online_count == size
    return fleet, conn, uid


def _run(size: int, body: Callable[[FleetHandler, Connection, bytes], Callable[[], Any]]) -> Any:
    async def main() -> Any:
        fleet, conn, uid = await _fleet(size)
        return body(fleet, conn, uid)

    return trio.run(main)


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_on_message_heartbeat(benchmark: Any, fleet_size: int) -> None:
    """Handler only: registry lookup, wheel refresh, core merge + reply, writer.seen."""

    def body(fleet: FleetHandler, conn: Connection, uid: bytes) -> Any:
        msg = pb.AgentToServer(instance_uid=uid, sequence_num=1, capabilities=CAPS)

        def one() -> pb.ServerToAgent:
            return _drive(fleet.on_message(conn, msg))

        reply = benchmark(one)
        assert reply.instance_uid == uid and not reply.flags
        assert fleet.heartbeats_total > 0
        return reply

    _run(fleet_size, body)


@pytest.mark.parametrize("fleet_size", [1_000, 100_000])
def test_frame_to_frame_heartbeat(benchmark: Any, fleet_size: int) -> None:
    """What the WS transport does per heartbeat minus ASGI: frame in -> frame out."""

    def body(fleet: FleetHandler, conn: Connection, uid: bytes) -> Any:
        frame = encode_ws_frame(
            pb.AgentToServer(
                instance_uid=uid, sequence_num=1, capabilities=CAPS
            ).SerializeToString()
        )

        def one() -> bytes:
            msg = decode_agent_to_server(decode_ws_payload(frame), max_bytes=MAX)
            reply = _drive(fleet.on_message(conn, msg))
            return encode_ws_frame(encode_server_to_agent(reply, max_bytes=MAX))

        out = benchmark(one)
        assert out[:1] == b"\x00"
        return out

    _run(fleet_size, body)
