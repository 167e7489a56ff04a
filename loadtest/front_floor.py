"""opamp-fast's own front with an echo handler: what the transport costs before any fleet logic.

Why: between Python's floor (``uvloop_floor.py``: hand framing, nothing else) and the whole
server (``opamp-fast serve``) lie two layers, and a per-connect figure says little until it is
split between them. This runs the server's real front, unchanged: ``AsyncioFront`` on uvloop,
the sans-IO ``OpAMPConnection`` (HTTP head parsing with httptools, the upgrade checks and
admission seam, Cython framing, the heartbeat scan, protobuf decode, reply encoding, deadlines
on the timing wheel, the GC policy), behind a handler that does what the uvloop floor does: it
answers each message with its ``instance_uid`` (the first reply also carries the capabilities
and the heartbeat interval offer), keeps no agent, writes nothing anywhere. The REST side is a
bare ASGI app answering ``/readyz``.

So ``compare.py --targets uvloop-floor,front-floor,opamp-fast`` splits the server's cost into
the front's share (front-floor - uvloop-floor) and the fleet logic's share (registry, protocol
state, writer, events, configs and packages: opamp-fast - front-floor).

Run: ``python loadtest/front_floor.py --port 4397``; SIGTERM/SIGINT stop it with exit status 0.
Loopback only.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import anyio
from procs import floor_args

from opamp_fast.observability.gcpolicy import GrowthFreezer, freeze_after_startup
from opamp_fast.protocol import ProtocolError, pb
from opamp_fast.transport import Limits, TransportStats
from opamp_fast.transport.asyncio_front import AsyncioFront
from opamp_fast.transport.handlers import ACCEPT, ConnectingRequest, ConnectionResponse


class EchoHandler:
    """The handler seam, doing what the uvloop floor does per message and nothing more."""

    def __init__(self, heartbeat_s: int) -> None:
        self.first = pb.ServerToAgent(capabilities=0x1)
        if heartbeat_s:
            self.first.connection_settings.opamp.heartbeat_interval_seconds = heartbeat_s
        self.open = 0

    def on_connecting(self, request: ConnectingRequest) -> ConnectionResponse:
        return ACCEPT

    def on_connected(self, conn: Any) -> None:
        self.open += 1

    def on_heartbeat(self, conn: Any, uid: bytes, seq: int, caps: int) -> bytes | None:
        if conn.record is None:
            return None  # the first message takes on_message (capabilities, offer)
        reply: bytes = pb.ServerToAgent(instance_uid=uid).SerializeToString()
        return reply

    def on_message(self, conn: Any, msg: pb.AgentToServer) -> pb.ServerToAgent:
        reply = pb.ServerToAgent(instance_uid=msg.instance_uid)
        if conn.record is None:
            conn.record = True
            reply.MergeFrom(self.first)
        return reply

    def on_read_message_error(self, conn: Any, error: ProtocolError) -> None:
        pass

    def on_connection_close(self, conn: Any) -> None:
        self.open -= 1


async def ready_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The REST side: lifespan, and 200 on any request (``/readyz`` for compare.py)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok\n"})


async def serve(host: str, port: int, backlog: int, heartbeat_s: int) -> None:
    handler = EchoHandler(heartbeat_s)
    limits = Limits(handler=handler, stats=TransportStats())  # type: ignore[arg-type]
    front = AsyncioFront(limits, ready_app, backlog=backlog)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    freeze_after_startup()
    async with anyio.create_task_group() as tg:
        await tg.start(front.run, [sock])
        await tg.start(GrowthFreezer(lambda: handler.open).run)
        sys.stderr.write(f"front floor listening on ws://{host}:{port}/v1/opamp\n")
        sys.stderr.flush()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        await front.drain(1.0)
        await front.aclose()
        tg.cancel_scope.cancel()


def main() -> int:
    args = floor_args(__doc__.splitlines()[0], port=4397, name="front floor")
    anyio.run(
        serve,
        args.host,
        args.port,
        args.backlog,
        args.heartbeat_interval_s,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
