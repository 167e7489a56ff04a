"""OpAMP over plain HTTP against the live server: framing, compression, limits, errors."""

from __future__ import annotations

import gzip
import time
import zlib

import anyio
import httpx
import pytest

from opamp_fast.protocol import pb
from tests.helpers.agents import HTTPAgent, description
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

pytestmark = pytest.mark.postgres


@pytest.fixture
async def client(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def test_poll_cycle_tracks_agent_across_requests(server, client) -> None:
    agent = HTTPAgent(client)
    first = await agent.full_state("inventory")
    assert first.instance_uid == agent.uid
    assert first.capabilities & 0x1
    record = server.services.registry.get(agent.uid)
    session = record.session
    for _ in range(3):
        beat = await agent.heartbeat()
        assert beat.capabilities & 0x1  # over HTTP, every response carries capabilities
        assert not beat.flags & 0x1
    assert record.online
    assert record.session is session  # one session across polls: not "disconnected" per request
    assert server.services.registry.statistics().online_http == 1


async def test_gzip_request_and_response(server, client) -> None:
    agent = HTTPAgent(client)
    raw = await client.post(
        "/v1/opamp",
        content=gzip.compress(agent.message(agent_description=description()).SerializeToString()),
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "Accept-Encoding": "gzip",
        },
    )
    assert raw.status_code == 200
    assert raw.headers["content-encoding"] == "gzip"
    assert pb.ServerToAgent.FromString(raw.content).instance_uid == agent.uid  # httpx inflated it
    plain = await client.post(
        "/v1/opamp",
        content=agent.message().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", "Accept-Encoding": "identity"},
    )
    assert "content-encoding" not in plain.headers
    assert pb.ServerToAgent.FromString(plain.content).instance_uid == agent.uid


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff garbage", b"\x0a\x05abc", pb.AgentToServer(sequence_num=3).SerializeToString()],
    ids=["garbage", "truncated", "no-instance-uid"],
)
async def test_undecodable_body_is_bad_request_not_500(server, client, body) -> None:
    before = len(server.services.registry)
    response = await client.post(
        "/v1/opamp", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    reply = pb.ServerToAgent.FromString(response.content)
    assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert reply.error_response.error_message
    assert not reply.HasField("remote_config") and reply.capabilities == 0
    assert len(server.services.registry) == before  # state untouched


async def test_body_over_limit_is_413(start_server, make_settings) -> None:
    running = await start_server(make_settings(max_message_bytes=2048))
    async with httpx.AsyncClient(base_url=running.url) as client:
        big = await client.post(
            "/v1/opamp", content=b"\x0a" * 4096, headers={"Content-Type": "application/x-protobuf"}
        )
        assert big.status_code == 413
        bomb = gzip.compress(b"\x00" * 1_000_000)  # tiny on the wire, huge inflated
        inflated = await client.post(
            "/v1/opamp",
            content=bomb,
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        )
        assert inflated.status_code == 413
        agent = HTTPAgent(client)
        assert (await agent.full_state()).instance_uid == agent.uid  # still serving


async def test_gzip_bomb_is_refused_by_its_ratio_before_the_limit(
    start_server, make_settings
) -> None:
    # Under a 64 MiB limit, a 200 kB body that would inflate to 200 MiB is refused after
    # inflating ~100x what arrived, not 64 MiB of zeros on the event loop.
    running = await start_server(make_settings(max_message_bytes=64 << 20))
    bomb = gzip.compress(b"\x00" * (200 << 20), compresslevel=9)
    assert len(bomb) < 300_000
    async with httpx.AsyncClient(base_url=running.url) as client:
        started = time.process_time()
        status, text = await post_until_answered(running.url, bomb)
        spent = time.process_time() - started
        assert status == 413
        assert "inflates more than 100x" in text
        # The work done is bounded by what was sent: inflating 64 MiB alone costs more.
        assert spent < inflate_cost(64 << 20)
        # A real message compressed normally is accepted (ratio far below the bound).
        agent = HTTPAgent(client)
        assert (await agent.full_state()).instance_uid == agent.uid  # still serving


@pytest.mark.parametrize(
    ("method", "headers", "content", "status"),
    [
        ("GET", {}, b"", 405),
        ("POST", {"Content-Type": "application/json"}, b"{}", 415),
        ("POST", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, b"x", 415),
        (
            "POST",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            b"nogz",
            400,
        ),
    ],
    ids=["get", "json", "brotli", "corrupt-gzip"],
)
async def test_wrong_framing_gets_clear_4xx(server, client, method, headers, content, status):
    response = await client.request(method, "/v1/opamp", content=content, headers=headers)
    assert response.status_code == status
    assert response.text.strip()


async def test_agent_token_required_when_configured(start_server, make_settings) -> None:
    running = await start_server(make_settings(agent_auth_token="t0ken"))
    async with httpx.AsyncClient(base_url=running.url) as client:
        agent = HTTPAgent(client)
        for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}):
            denied = await agent.post(agent.message(agent_description=description()), headers=bad)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"] == "Bearer"
        assert running.services.registry.get(agent.uid) is None
        ok = await agent.post(
            agent.message(agent_description=description()),
            headers={"Authorization": "Bearer t0ken"},
        )
        assert ok.status_code == 200
        assert running.services.registry.get(agent.uid).online


def inflate_cost(size: int) -> float:
    """CPU seconds this machine needs to inflate ``size`` bytes of zeros."""
    data = gzip.compress(b"\x00" * size, compresslevel=9)
    started = time.process_time()
    zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return time.process_time() - started


async def post_until_answered(url: str, gz_body: bytes) -> tuple[int, str]:
    """POST a gzip body over a raw socket, stop sending once the server answered (it answers
    and closes before reading all of a bomb); (status, body text)."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/opamp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(gz_body)}\r\n\r\n"
    ).encode()
    async with await anyio.connect_tcp(host, int(port)) as stream:
        try:
            await stream.send(head + gz_body)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the server answered and closed before taking it all
        answer = b""
        with anyio.move_on_after(10):
            try:
                while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                    answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.decode(errors="replace")
