"""Random and mutated input against the running OpAMP endpoint.

The invariant, as in h11's fuzz harness: whatever arrives, the server answers it or closes that
one connection with a proper code, never crashes a connection with an internal error, and keeps
serving real agents. Inputs come from a seeded generator (reproducible): random bytes, request
heads with mutations, valid WebSocket frames with bit flips, truncations and forged lengths, and
well-framed protobuf payloads with mutations.
"""

from __future__ import annotations

import os
import random
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.native.wsframe import OP_BINARY, encode_client_frame
from opamp_fast.protocol import pb
from tests.helpers.agents import description, open_ws_agent
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SEED = int(os.environ.get("OPAMP_FAST_FUZZ_SEED", "1234"))
CASES = int(os.environ.get("OPAMP_FAST_FUZZ_CASES", "400"))

UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def valid_message(rng: random.Random) -> bytes:
    msg = pb.AgentToServer(
        instance_uid=rng.randbytes(16), sequence_num=rng.randrange(1 << 20), capabilities=0x3907
    )
    if rng.random() < 0.5:
        msg.agent_description.CopyFrom(description(f"fuzz-{rng.randrange(100)}"))
    if rng.random() < 0.3:
        msg.health.healthy = True
        msg.health.status = "x" * rng.randrange(50)
    if rng.random() < 0.2:
        msg.agent_disconnect.SetInParent()
    return msg.SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        choice = rng.random()
        if not buf or choice < 0.25:
            buf[rng.randrange(len(buf) + 1) :] = rng.randbytes(rng.randrange(8))
        elif choice < 0.6:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif choice < 0.8:
            del buf[rng.randrange(len(buf)) :]
        else:
            i = rng.randrange(len(buf))
            buf[i:i] = rng.randbytes(rng.randrange(1, 16))
    return bytes(buf)


def case(rng: random.Random) -> tuple[bool, bytes]:
    """(upgrade first, bytes to send)."""
    kind = rng.randrange(5)
    if kind == 0:
        return False, rng.randbytes(rng.randrange(1, 512))
    if kind == 1:
        post = b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        body = mutate(valid_message(rng), rng)
        head = post + b"Content-Length: %d\r\n\r\n" % len(body)
        return False, mutate(head, rng) + body if rng.random() < 0.5 else head + body
    if kind == 2:
        return False, mutate(UPGRADE, rng)
    payload = b"\x00" + valid_message(rng)
    frame = encode_client_frame(OP_BINARY, payload, mask=rng.randbytes(4))
    if kind == 3:
        return True, mutate(frame, rng)
    return True, encode_client_frame(OP_BINARY, mutate(payload, rng), mask=rng.randbytes(4))


async def exchange(port: int, upgrade: bool, data: bytes) -> None:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        try:
            if upgrade:
                await stream.send(UPGRADE)
                assert (await stream.receive()).startswith(b"HTTP/1.1 101")
            await stream.send(data)
            with anyio.move_on_after(0.3):
                while await stream.receive():
                    pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def test_random_and_mutated_input_never_hurts_the_server(
    start_server: Any, make_settings: Any
):
    running = await start_server(
        make_settings(handshake_timeout_s=1.0, message_timeout_s=1.0, close_timeout_s=0.5)
    )
    port = int(running.url.rsplit(":", 1)[1])
    stats = running.services.opamp.stats
    rng = random.Random(SEED)
    async with anyio.create_task_group() as tg:
        for _ in range(CASES):
            tg.start_soon(exchange, port, *case(rng))
            await anyio.sleep(0.005)
    internal = {key: n for key, n in stats.errors.items() if key[1] == "internal_error"}
    assert internal == {}, f"connections crashed (seed {SEED}): {internal}"
    assert sum(stats.errors.values()) > CASES // 4  # the input really was bad, mostly
    async with httpx.AsyncClient(base_url=running.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with open_ws_agent(running.url) as agent:
        assert (await agent.full_state()).instance_uid == agent.uid
