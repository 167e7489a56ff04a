"""The floor: a minimal trio + wsproto OpAMP "server" that only frames, decodes and answers.

Why: the server's per-message CPU cost means little alone on a shared 2-core machine. Running the
simulator the same way against this echo (raw TCP, wsproto, the 0x00 header, protobuf decode of
every ``AgentToServer``, a ``ServerToAgent`` with the uid in reply) gives the cost of the
unavoidable part, so ``server us/message / floor us/message`` is the price of everything
opamp-fast adds (hypercorn, ASGI, registry, wheel, protocol rules, persistence).

Run: ``python loadtest/echo_floor.py --port 4399 [--heartbeat-interval-s 1]``; SIGTERM/SIGINT stop
it with exit status 0. Loopback only.
"""

from __future__ import annotations

import signal
import sys

import trio
import wsproto
import wsproto.events as wse
import wsproto.utilities
from procs import floor_args

from opamp_fast.protocol import decode_ws_payload, encode_ws_frame, pb

_RECV = 65536


async def serve_connection(stream: trio.SocketStream, offer: pb.ServerToAgent | None) -> None:
    """One WebSocket: handshake, then decode every frame and answer it; no other state."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    first = True
    try:
        while True:
            data = await stream.receive_some(_RECV)
            if not data:
                return
            ws.receive_data(data)
            out: list[bytes] = []
            for event in ws.events():
                if isinstance(event, wse.Request):
                    out.append(ws.send(wse.AcceptConnection()))
                elif isinstance(event, wse.BytesMessage) and event.message_finished:
                    msg = pb.AgentToServer.FromString(decode_ws_payload(bytes(event.data)))
                    reply = pb.ServerToAgent(instance_uid=msg.instance_uid)
                    if first:
                        reply.capabilities = 0x1
                        if offer is not None:
                            reply.MergeFrom(offer)
                        first = False
                    payload = encode_ws_frame(reply.SerializeToString())
                    out.append(ws.send(wse.Message(data=payload)))
                elif isinstance(event, wse.Ping):
                    out.append(ws.send(event.response()))
                elif isinstance(event, wse.CloseConnection):
                    out.append(ws.send(event.response()))
                    await stream.send_all(b"".join(out))
                    return
            if out:
                await stream.send_all(b"".join(out))
    except (trio.BrokenResourceError, trio.ClosedResourceError, wsproto.utilities.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def main_async(host: str, port: int, backlog: int, heartbeat_s: int) -> None:
    offer = None
    if heartbeat_s:
        offer = pb.ServerToAgent()
        offer.connection_settings.opamp.heartbeat_interval_seconds = heartbeat_s
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    sys.stderr.write(f"echo floor listening on ws://{host}:{port}/v1/opamp\n")
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, offer)

        nursery.start_soon(trio.serve_listeners, handler, listeners)


def main() -> int:
    args = floor_args(__doc__.splitlines()[0], port=4399, name="echo floor")
    trio.run(main_async, args.host, args.port, args.backlog, args.heartbeat_interval_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
