"""Every byte that reaches the shared port is bounded, whichever path it names: request heads
and bodies for the REST API (on any request of a keep-alive connection), WebSockets that
upgrade and say nothing, the memory all partial input holds together, event-stream clients
that stop reading, pipelined requests. Each test plays the attacker with raw sockets against
a real server and then checks that real agents and probes are still served."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import anyio
import httpx
import pytest

from opamp_fast.auth import load_key_material, mint_token
from opamp_fast.native.wsframe import OP_BINARY
from opamp_fast.protocol import Transport, pb
from tests.helpers.agents import new_uid, open_ws_agent, wait_for
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.integration.test_hostile_peers import (
    UPGRADE,
    assert_still_serving,
    close_code,
    port_of,
    raw,
    receive_until_closed,
    upgraded,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

POST_HEAD = (
    b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
    b"Content-Length: %d\r\n\r\n"
)


@pytest.fixture
async def strict_server(start_server: Any, make_settings: Any) -> Any:
    return await start_server(
        make_settings(handshake_timeout_s=1.0, message_timeout_s=1.0, close_timeout_s=1.0)
    )


def token(running: Any, role: str) -> str:
    settings = running.services.settings
    return mint_token(load_key_material(settings), subject=role, ttl_s=600, role=role)


async def healthz_then(stream: Any) -> None:
    """A first request on a keep-alive connection: everything after it is what used to belong
    to the REST server without any bound."""
    await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 200"), answer


def heartbeat_post(seq: int, uid: bytes) -> bytes:
    body = pb.AgentToServer(instance_uid=uid, sequence_num=seq).SerializeToString()
    return POST_HEAD % len(body) + body


# -- 1. time bounds after the first request ----------------------------------------------------
async def test_second_request_head_sent_a_byte_at_a_time_gets_408(strict_server: Any) -> None:
    async with await raw(strict_server) as stream:
        await healthz_then(stream)
        started = time.monotonic()

        async def dribble() -> None:
            try:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.2)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(dribble)
            answer = await receive_until_closed(stream)
            tg.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    await assert_still_serving(strict_server)


async def test_rest_body_that_never_completes_gets_408(strict_server: Any) -> None:
    async with await raw(strict_server) as stream:
        await healthz_then(stream)
        await stream.send(
            b"PUT /api/groups/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Authorization: Bearer %b\r\nContent-Length: 1000\r\n\r\n{"selec'
            % token(strict_server, "operator").encode()
        )
        started = time.monotonic()
        answer = await receive_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 3
    assert strict_server.services.opamp.stats.timeouts["body"] >= 1


async def test_upload_trickle_is_cut_off_while_a_steady_upload_goes_through(
    start_server: Any, make_settings: Any
) -> None:
    """A body may take message_timeout_s plus a second per min_body_bytes_per_s received: a
    large upload that keeps coming is served, a trickle is not."""
    running = await start_server(make_settings(message_timeout_s=1.0, min_body_bytes_per_s=4096))
    bearer = token(running, "operator").encode()
    head = (
        b"POST /api/packages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    ) % bearer
    async with await raw(running) as stream:
        await stream.send(head)
        started = time.monotonic()

        async def trickle() -> None:
            try:
                while True:
                    await stream.send(b"x" * 100)
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            answer = await receive_until_closed(stream, limit_s=10)
            tg.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    # 1 s, plus 1 s per 4 KiB of the ~1 KiB/s that arrived: cut off after about 1.3 s.
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert elapsed < 4, elapsed
    # A body arriving faster than the floor takes as long as it needs: 60 KiB in ~3 s.
    async with await raw(running) as stream:
        await stream.send(
            b"PUT /api/groups/steady HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (bearer, 30 * 2048 + 2)
        )
        for _ in range(30):
            await stream.send(b" " * 2048)
            await anyio.sleep(0.1)
        await stream.send(b"{}")
        answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 200"), answer  # the group was created, no timeout


# -- 2. the head limit holds on every request -------------------------------------------------
@pytest.mark.parametrize("after_first", [False, True])
async def test_huge_request_head_is_refused_at_16_kib(
    strict_server: Any, after_first: bool
) -> None:
    stats = strict_server.services.opamp.stats
    async with await raw(strict_server) as stream:
        if after_first:
            await healthz_then(stream)
        await stream.send(b"GET /healthz HTTP/1.1\r\nX-Pad: ")
        sent = 0
        with anyio.fail_after(5):
            try:
                while sent < 64 * 1024 * 1024:
                    await stream.send(b"a" * 65536)
                    sent += 65536
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the server answered 431 and closed; the rest of our head is refused
    assert sent < 8 * 1024 * 1024, sent  # refused after the limit, not after 64 MiB
    assert stats.errors[Transport.HTTP, "too_large"] == 1
    await assert_still_serving(strict_server)
    async with await raw(strict_server) as stream:  # the answer itself, for a client that waits
        await stream.send(b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 17000)
        assert (await receive_until_closed(stream)).startswith(b"HTTP/1.1 431")


# -- 3. silent WebSockets cannot hold every handshake slot ------------------------------------
async def test_silent_upgrades_give_their_slots_to_real_agents(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(max_handshakes=8, message_timeout_s=30.0))
    silent = [await upgraded(running) for _ in range(8)]
    try:
        await anyio.sleep(1.2)  # past the grace a real agent would need to send its message
        async with open_ws_agent(running.url) as agent:
            assert (await agent.full_state()).instance_uid == agent.uid
        assert running.services.opamp.stats.upgrades_evicted >= 1
        # A crowd of fresh upgrades is not evicted: within the grace, newcomers are refused.
        fresh = [await upgraded(running) for _ in range(8)]
        try:
            stream = await raw(running)
            async with stream:
                await stream.send(UPGRADE)
                assert (await stream.receive()).startswith(b"HTTP/1.1 503")
        finally:
            for s in fresh:
                await s.aclose()
    finally:
        for s in silent:
            await s.aclose()


# -- 4. one memory budget for partial input ---------------------------------------------------
async def test_partial_messages_share_one_budget_and_the_largest_gives_way(
    start_server: Any, make_settings: Any
) -> None:
    mib = 1024 * 1024
    running = await start_server(
        make_settings(max_message_bytes=2 * mib, max_buffered_bytes=3 * mib)
    )
    budget = running.services.opamp.budget
    header = bytes([0x80 | OP_BINARY, 0x80 | 127]) + (2 * mib - 64).to_bytes(8, "big")
    streams = [await upgraded(running) for _ in range(3)]
    try:
        held = 0
        for stream, size in zip(streams, (1200, 1100, 800), strict=True):  # KiB of 2 MiB each
            await stream.send(header + os.urandom(4) + b"\0" * (size * 1024))
            held += size * 1024
            await wait_for(lambda held=held: budget.total >= min(held, 2300 * 1024))
        await wait_for(lambda: budget.shed_total == 1)  # 3.05 MiB: the largest gives way
        assert budget.total == 1900 * 1024 + 2 * len(header) + 8
        data = await receive_until_closed(streams[0])
        assert close_code(data) == 1013
    finally:
        for stream in streams:
            await stream.aclose()
    await wait_for(lambda: budget.total == 0)
    # POST bodies count too: the one holding most gets 503 with Retry-After.
    posts = [await raw(running) for _ in range(2)]
    try:
        for stream, size in zip(posts, (1800, 1400), strict=True):
            await stream.send(POST_HEAD % (2 * mib - 1024) + b"\0" * (size * 1024))
        answer = await receive_until_closed(posts[0])
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after" in answer.lower(), answer
    finally:
        for stream in posts:
            await stream.aclose()
    await assert_still_serving(running)


# -- 5. event-stream clients that never read --------------------------------------------------
async def test_event_subscriber_that_never_reads_loses_its_socket(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(
        make_settings(message_timeout_s=1.0, close_timeout_s=1.0, events_queue_max=10)
    )
    stats = running.services.opamp.stats
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port_of(running)))
    sock.sendall(
        b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n\r\n"
        % token(running, "viewer").encode()
    )
    try:
        await wait_for(lambda: running.services.events.statistics().subscribers == 1)
        open_before = stats.tcp_open
        big = "x" * 8000
        for _ in range(100):  # events of ~8 KiB: far more than the client reads
            async with open_ws_agent(running.url) as agent:
                await agent.full_state(big)
        await wait_for(lambda: running.services.events.statistics().subscribers == 0)
        await wait_for(lambda: stats.tcp_open < open_before, timeout=10)
    finally:
        sock.close()
    await assert_still_serving(running)


# -- 9. pipelining -----------------------------------------------------------------------------
def _pipelined(port: int, prefix: bytes, requests: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(prefix + b"".join(requests))
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data


async def test_hundreds_of_pipelined_posts_are_answered_in_order(
    start_server: Any, make_settings: Any, caplog: Any
) -> None:
    running = await start_server(make_settings(max_agent_messages_per_s=0, max_loop_lag_s=30.0))
    uid = new_uid()
    requests = [heartbeat_post(seq, uid) for seq in range(600)]
    with caplog.at_level(logging.ERROR):
        data = await anyio.to_thread.run_sync(_pipelined, port_of(running), b"", requests)
    assert data.count(b"HTTP/1.1 200") == 600
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await assert_still_serving(running)


async def test_message_budget_applies_to_posts_after_a_rest_request(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(max_agent_messages_per_s=5.0))
    uid = new_uid()
    requests = [heartbeat_post(seq, uid) for seq in range(600)]
    prefix = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    data = await anyio.to_thread.run_sync(_pipelined, port_of(running), prefix, requests)
    answered = data.count(b"HTTP/1.1 200") - 1  # the probe's
    assert 45 <= answered <= 60, answered  # a burst of 10 s at 5/s, then
    assert data.count(b"HTTP/1.1 429") == 1


# -- 11. requests that end badly ----------------------------------------------------------------
async def test_bare_lf_head_gets_400_at_once(strict_server: Any) -> None:
    async with await raw(strict_server) as stream:
        started = time.monotonic()
        await stream.send(b"GET /healthz HTTP/1.1\nHost: x\n\n")
        answer = await receive_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert time.monotonic() - started < 0.5


async def test_client_gone_mid_body_logs_no_traceback(server: Any, caplog: Any) -> None:
    bearer = token(server, "operator").encode()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            async with await raw(server) as stream:
                await stream.send(
                    b"PUT /api/groups/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
                    b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"s' % bearer
                )
                await anyio.sleep(0.2)
        await anyio.sleep(0.3)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
