"""Descriptor budget: a server process near its open-file limit keeps serving probes and agents
(the oldest idle sockets give way), and accept never fails with EMFILE."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import httpx
import pytest

from tests.helpers.agents import open_ws_agent

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_idle_socket_flood_cannot_lock_out_probes_or_agents(
    launch: Any, backend: str
) -> None:
    """A process limited to 600 descriptors, 700 sockets that never send a byte: the oldest idle
    ones give way to newcomers, so probes and agents still get through, and accept never fails
    with EMFILE."""
    server = launch(fd_limit=600, backend=backend, handshake_timeout_s="60")
    await server.ready()
    port = server.port
    idle = []
    try:
        for _ in range(700):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        await anyio.sleep(0.5)
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
            metrics = (await http.get("/metrics")).text
        async with open_ws_agent(server.url) as agent:
            assert (await agent.full_state()).instance_uid == agent.uid
    finally:
        for sock in idle:
            sock.close()
    evicted = [line for line in metrics.splitlines() if line.startswith("opamp_fast_tcp_evicted")]
    assert evicted and float(evicted[0].split()[-1]) >= 100, evicted
    assert "Too many open files" not in server.output()
