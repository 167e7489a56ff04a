"""Python's floor: an OpAMP WebSocket echo on asyncio + uvloop with hand-written framing.

Why: ``echo_floor.py`` (trio + wsproto) measures what the current stack cannot go below; this one
measures what pure Python can reach at all on this machine: one ``asyncio.Protocol`` object with
``__slots__`` per connection, no task per connection, the HTTP upgrade parsed by hand
(``Sec-WebSocket-Accept`` computed here), frames parsed and unmasked in pure Python (one big-int
XOR). Per binary frame it does the same work as the trio echo: strip the 0x00 header, decode the
``AgentToServer`` with protobuf, answer a ``ServerToAgent`` carrying its ``instance_uid`` (the
first reply also carries capabilities and, with ``--heartbeat-interval-s``, the interval offer).

It always unmasks, even when the mask key is zero (wsload sends zero keys): real agents use
random keys, so skipping the XOR would flatter the floor.

Run: ``python loadtest/uvloop_floor.py --port 4398``; SIGTERM/SIGINT stop it with exit status 0.
Loopback only. ``GET /readyz`` (no upgrade) answers 200 for readiness probes. With
``--processes N`` the port is shared by N forked copies (``SO_REUSEPORT``), the floor of
``opamp-fast --workers N``: what N event loops on this machine cost whatever runs in them. The
first process stops the others when it stops, and they stop with it if it dies.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import gc
import hashlib
import os
import signal
import sys
from typing import Any, Final

from procs import floor_args

from opamp_fast.protocol import pb

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD: Final = 16384
_MAX_FRAME: Final = 16 * 1024 * 1024
_HEADS: Final = tuple(bytes((0x82, n)) for n in range(126))  # FIN|binary, unmasked length
_FromString = pb.AgentToServer.FromString
_ServerToAgent = pb.ServerToAgent


def _server_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = (key * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )


class Conn(asyncio.Protocol):
    """One connection: handshake state, a receive buffer, the transport. Nothing else."""

    __slots__ = ("buf", "first", "frag", "open", "server", "transport")

    def __init__(self, server: Floor) -> None:
        self.server = server
        self.transport: Any = None
        self.buf = b""
        self.frag = b""
        self.open = False
        self.first = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.frames(data)
        else:
            self.handshake(data)

    def handshake(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self.http_error(b"431 Request Header Fields Too Large")
            else:
                self.buf = buf
            return
        self.buf = b""
        lines = buf[:end].split(b"\r\n")
        request = lines[0].split(b" ")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        if (
            len(request) != 3
            or request[0] != b"GET"
            or key is None
            or b"websocket" not in headers.get(b"upgrade", b"").lower()
        ):
            if len(request) == 3 and request[1] in (b"/readyz", b"/healthz"):
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                )
                self.transport.close()
            else:
                self.http_error(b"400 Bad Request")
            return
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True
        rest = buf[end + 4 :]
        if rest:
            self.frames(rest)

    def http_error(self, status: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()

    def frames(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        n = len(data)
        while n - pos >= 6:  # client frames are masked: at least 2 + 4 bytes
            b1 = data[pos + 1]
            if not b1 & 0x80:
                self.close(1002)
                return
            length = b1 & 0x7F
            head = 6
            if length == 126:
                if n - pos < 8:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 8
            elif length == 127:
                if n - pos < 14:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 14
                if length > _MAX_FRAME:
                    self.close(1009)
                    return
            end = pos + head + length
            if end > n:
                break
            payload = _unmask(data[pos + head : end], data[pos + head - 4 : pos + head])
            b0 = data[pos]
            pos = end
            if b0 == 0x82:
                self.message(payload)
            else:
                self.control(b0, payload)
            if self.transport is None or not self.open:
                return
        if pos < n:
            self.buf = data[pos:]

    def control(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (0x2, 0x0):
            self.frag += payload
            if b0 & 0x80:
                payload, self.frag = self.frag, b""
                self.message(payload)
        elif opcode == 0x8:
            self.open = False
            self.transport.write(_server_frame(payload[:2], 0x8))
            self.transport.close()
        elif opcode == 0x9:
            self.transport.write(_server_frame(payload, 0xA))
        elif opcode != 0xA:
            self.close(1003)

    def message(self, payload: bytes) -> None:
        if payload[:1] == b"\x00":
            payload = payload[1:]
        elif payload and payload[0] < 8:
            self.close(1002)
            return
        try:
            msg = _FromString(payload)
        except Exception:
            self.close(1002)
            return
        reply = _ServerToAgent(instance_uid=msg.instance_uid)
        if self.first:
            self.first = False
            reply.capabilities = 0x1
            offer = self.server.offer
            if offer is not None:
                reply.MergeFrom(offer)
        body = b"\x00" + reply.SerializeToString()
        n = len(body)
        self.transport.write(_HEADS[n] + body if n < 126 else _server_frame(body))

    def close(self, code: int) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.write(_server_frame(code.to_bytes(2, "big"), 0x8))
            self.transport.close()


class Floor:
    def __init__(self, heartbeat_s: int) -> None:
        self.conns: set[Conn] = set()
        self.offer: Any = None
        if heartbeat_s:
            self.offer = pb.ServerToAgent()
            self.offer.connection_settings.opamp.heartbeat_interval_seconds = heartbeat_s

    async def serve(self, host: str, port: int, backlog: int, *, shared: bool = False) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Conn(self), host, port, backlog=backlog, reuse_address=True, reuse_port=shared
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)
        sys.stderr.write(f"uvloop floor listening on ws://{host}:{port}/v1/opamp\n")
        sys.stderr.flush()
        await stop.wait()
        server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()


def fork_copies(count: int) -> list[int]:
    """Fork ``count`` copies of this process (before any event loop exists); each gets SIGTERM
    when its parent dies. Returns the children's PIDs in the parent, [] in a child."""
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            return []
        children.append(pid)
    return children


def main() -> int:
    args = floor_args(__doc__.splitlines()[0], port=4398, name="uvloop floor", processes=True)
    import uvloop

    shared = args.processes > 1
    children = fork_copies(args.processes - 1)
    floor = Floor(args.heartbeat_interval_s)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(floor.serve(args.host, args.port, args.backlog, shared=shared))
    finally:
        loop.close()
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
