"""Hostile and broken peers: every phase of a connection is bounded in time, a peer
that stops reading is dropped, closes free their socket at once, floods of idle sockets and of
tiny fragments cost little, and the server keeps serving real agents through all of it."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.native.wsframe import OP_BINARY, OP_CLOSE, OP_CONTINUATION, encode_client_frame
from opamp_fast.protocol import Transport, pb
from tests.helpers.agents import description, new_uid, open_ws_agent, wait_for
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def port_of(running: Any) -> int:
    return int(running.url.rsplit(":", 1)[1])


def frame(msg: pb.AgentToServer) -> bytes:
    return encode_client_frame(OP_BINARY, b"\x00" + msg.SerializeToString(), mask=os.urandom(4))


@pytest.fixture
async def strict_server(start_server: Any, make_settings: Any) -> Any:
    """Short bounds so that each phase visibly ends within the test."""
    return await start_server(
        make_settings(handshake_timeout_s=1.0, message_timeout_s=1.0, close_timeout_s=1.0)
    )


async def raw(running: Any) -> Any:
    return await anyio.connect_tcp("127.0.0.1", port_of(running))


async def upgraded(running: Any) -> Any:
    stream = await raw(running)
    await stream.send(UPGRADE)
    head = await stream.receive()
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


async def receive_until_closed(stream: Any, limit_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit_s`` passes)."""
    data = b""
    with anyio.move_on_after(limit_s):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data
    raise AssertionError(f"the server kept the connection open; got {data[:200]!r}")


def close_code(data: bytes) -> int:
    """The status code of the first close frame among the server's (unmasked) frames."""
    at = 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        if opcode == 0x8:
            return int(struct.unpack("!H", data[at : at + 2])[0])
        at += length
    raise AssertionError(f"no close frame in {data[:200]!r}")


async def assert_still_serving(running: Any) -> None:
    async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with open_ws_agent(running.url) as agent:
        assert (await agent.full_state()).instance_uid == agent.uid


# -- every phase is bounded --------------------------------------------------------------------
async def test_head_sent_a_byte_at_a_time_times_out(strict_server: Any) -> None:
    stream = await raw(strict_server)
    started = time.monotonic()

    async def dribble() -> None:
        try:
            for byte in UPGRADE[:30]:
                await stream.send(bytes([byte]))
                await anyio.sleep(0.2)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(dribble)
        answer = await receive_until_closed(stream)
        tg.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    assert strict_server.services.opamp.stats.timeouts["handshake"] == 1
    await assert_still_serving(strict_server)


async def test_upgraded_socket_that_never_sends_a_message_is_closed(strict_server: Any) -> None:
    stats = strict_server.services.opamp.stats
    async with await upgraded(strict_server) as stream:
        assert stats.ws_open == 1
        data = await receive_until_closed(stream)
    assert close_code(data) == 1008
    await wait_for(lambda: stats.ws_open == 0 and stats.tcp_open == 0)
    assert stats.timeouts["first_message"] == 1


async def test_post_body_that_never_completes_times_out_and_frees_the_slot(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(message_timeout_s=1.0, max_connections=1))
    stats = running.services.opamp.stats
    async with await raw(running) as stream:
        await stream.send(
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1000\r\n\r\nabc"
        )
        await wait_for(lambda: stats.http_open == 1)
        answer = await receive_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert stats.http_open == 0 and stats.timeouts["body"] == 1
    await assert_still_serving(running)  # the only slot is free again


async def test_frame_announcing_megabytes_then_nothing_is_closed(strict_server: Any) -> None:
    async with await upgraded(strict_server) as stream:
        # A masked binary frame header announcing 1 MiB, then silence.
        await stream.send(b"\x82\xff" + (1 << 20).to_bytes(8, "big") + b"\x00\x00\x00\x00" + b"x")
        data = await receive_until_closed(stream)
    assert close_code(data) == 1008
    assert strict_server.services.opamp.stats.timeouts["message"] == 1


async def test_peer_that_never_answers_our_close_is_dropped(strict_server: Any) -> None:
    stats = strict_server.services.opamp.stats
    async with await upgraded(strict_server) as stream:
        uid = new_uid()
        full = pb.AgentToServer(instance_uid=uid, capabilities=0x3007)
        full.agent_description.CopyFrom(description())
        await stream.send(frame(full))
        await wait_for(lambda: strict_server.services.registry.get(uid) is not None)
        strict_server.services.fleet.close_all()  # what shutdown does: 1001, then we wait
        started = time.monotonic()
        data = await receive_until_closed(stream)  # we never send our close frame back
    assert close_code(data) == 1001
    assert time.monotonic() - started < 3
    assert stats.timeouts["close"] == 1
    await wait_for(lambda: stats.tcp_open == 0)


# -- peers that do not read ----------------------------------------------------------------------
def _flood_without_reading(port: int, uid: bytes, close_at_end: bool) -> int:
    """Blocking: upgrade, then send heartbeats and never read, until the kernel buffers fill."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(UPGRADE)
    time.sleep(0.2)  # the 101 stays unread, like everything after it
    full = pb.AgentToServer(instance_uid=uid, capabilities=0x3007)
    full.agent_description.CopyFrom(description())
    sock.sendall(frame(full))
    sock.settimeout(2.0)
    sent = 0
    try:
        for seq in range(1, 2_000_000):
            sock.sendall(frame(pb.AgentToServer(instance_uid=uid, sequence_num=seq)))
            sent += 1
    except (TimeoutError, OSError):
        pass  # blocked: the server stopped reading us (or dropped us)
    if close_at_end:
        sock.close()
    else:
        sock.settimeout(10.0)
        try:
            while sock.recv(65536):  # read what is left until the server closes
                pass
        except OSError:
            pass
        sock.close()
    return sent


@pytest.mark.parametrize("close_at_end", [True, False], ids=["then-closes", "stays"])
async def test_peer_that_never_reads_is_dropped_and_its_slot_freed(
    start_server: Any, make_settings: Any, close_at_end: bool
) -> None:
    running = await start_server(make_settings(message_timeout_s=1.0, max_connections=1))
    stats = running.services.opamp.stats
    uid = new_uid()
    sent = await anyio.to_thread.run_sync(
        _flood_without_reading, port_of(running), uid, close_at_end
    )
    assert sent > 100  # it really flooded before the server stopped reading
    await wait_for(lambda: stats.ws_open == 0 and stats.tcp_open == 0, timeout=10)
    record = running.services.registry.get(uid)
    assert record is not None and not record.online
    await assert_still_serving(running)  # max_connections=1: the slot is free again


# -- floods ----------------------------------------------------------------------------------------
async def test_connect_close_flood_frees_every_socket_at_once(strict_server: Any) -> None:
    stats = strict_server.services.opamp.stats
    fds_before = len(os.listdir("/proc/self/fd"))

    def flood() -> None:
        for _ in range(1000):
            socket.create_connection(("127.0.0.1", port_of(strict_server))).close()

    await anyio.to_thread.run_sync(flood)
    await wait_for(lambda: stats.tcp_open == 0, timeout=2)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5
    await assert_still_serving(strict_server)


async def test_one_byte_fragments_are_refused_quickly(strict_server: Any) -> None:
    async with await upgraded(strict_server) as stream:
        first = encode_client_frame(OP_BINARY, b"\x00", mask=os.urandom(4), fin=False)
        pieces = [encode_client_frame(OP_CONTINUATION, b"\x0a", fin=False) for _ in range(5000)]
        started = time.monotonic()
        try:
            await stream.send(first + b"".join(pieces))
        except anyio.BrokenResourceError:
            pass
        data = await receive_until_closed(stream)
    assert close_code(data) == 1008
    assert time.monotonic() - started < 2
    await assert_still_serving(strict_server)


async def test_garbage_and_close_frames_in_any_order_never_hurt(strict_server: Any) -> None:
    junks = (
        b"\x00" * 64,
        os.urandom(256),
        b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\n\r\n",  # neither a POST nor an upgrade
        b"\r\n\r\n",
        b"POST /v1/opamp HTTP/1.1\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    for junk in junks:
        async with await raw(strict_server) as stream:
            await stream.send(junk)
            await receive_until_closed(stream)
    async with await upgraded(strict_server) as stream:
        await stream.send(encode_client_frame(OP_CLOSE, b"\x03\xe8", mask=os.urandom(4)))
        data = await receive_until_closed(stream)
        assert close_code(data) == 1000
    await assert_still_serving(strict_server)


# -- message rate ----------------------------------------------------------------------------------
async def test_a_flood_of_messages_is_closed_after_the_burst(
    start_server: Any, make_settings: Any
) -> None:
    # 5 messages/s, bursts of 50: a peer that floods (and reads every reply) is cut off after
    # about 50 messages instead of making the server process them for as long as it likes.
    running = await start_server(make_settings(max_agent_messages_per_s=5.0))
    stats = running.services.opamp.stats
    uid = new_uid()
    answered = 0
    async with await upgraded(running) as stream:
        data = b""
        with anyio.move_on_after(10):
            for seq in range(1000):
                try:
                    await stream.send(frame(pb.AgentToServer(instance_uid=uid, sequence_num=seq)))
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
                if data[0] & 0x0F == 0x8:  # the server's close frame
                    break
                answered += 1
                data = b""
    assert 45 <= answered <= 60, answered
    assert close_code(data) == 1008
    assert stats.errors[Transport.WS, "rate"] == 1
    await assert_still_serving(running)  # every other connection has its own budget


async def test_a_flood_of_http_requests_gets_429(start_server: Any, make_settings: Any) -> None:
    running = await start_server(make_settings(max_agent_messages_per_s=5.0))
    uid = new_uid()
    statuses = []
    async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
        for seq in range(60):
            body = pb.AgentToServer(instance_uid=uid, sequence_num=seq).SerializeToString()
            r = await http.post(
                "/v1/opamp", content=body, headers={"Content-Type": "application/x-protobuf"}
            )
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["retry-after"] == "10"
                break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    assert 45 <= len(statuses) - 1 <= 55, len(statuses)
