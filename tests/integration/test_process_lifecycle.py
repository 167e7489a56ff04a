"""The server as a real process: SIGTERM drains and closes history with "server shutdown";
``kill -9`` leaves rows open that the next start closes with "server restart"."""

from __future__ import annotations

import os
import signal
import time

import anyio
import httpx
import psycopg
import pytest

from tests.helpers.agents import HTTPAgent, open_ws_agent, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def query(database_url: str, sql: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql).fetchall()


def open_rows(database_url: str) -> int:
    return query(
        database_url, "SELECT count(*) FROM agent_connection_history WHERE disconnected_at IS NULL"
    )[0][0]


async def connect_agents(url: str, ws_count: int, http_count: int, stack) -> None:
    for _ in range(ws_count):
        agent = await stack.enter_async_context(open_ws_agent(url))
        await agent.full_state()
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
    for _ in range(http_count):
        await HTTPAgent(client).full_state()


async def test_sigterm_closes_every_history_row_with_server_shutdown(launch, database_url):
    import contextlib

    server = launch()
    await server.ready()
    async with contextlib.AsyncExitStack() as stack:
        await connect_agents(server.url, ws_count=5, http_count=3, stack=stack)
        await wait_for(lambda: open_rows(database_url) == 8, timeout=10)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = await anyio.to_thread.run_sync(server.proc.wait, 15)
        elapsed = time.monotonic() - started
    assert rc == 0, server.output()
    assert elapsed < 3 + 5  # grace period plus drain bound
    assert open_rows(database_url) == 0
    reasons = query(database_url, "SELECT DISTINCT disconnect_reason FROM agent_connection_history")
    assert reasons == [("server shutdown",)]
    statuses = query(database_url, "SELECT status, count(*) FROM agents GROUP BY status")
    assert statuses == [("offline", 8)]
    assert "shutdown complete" in server.output()


async def test_kill_9_then_restart_closes_rows_with_server_restart(launch, database_url):
    import contextlib

    server = launch()
    await server.ready()
    async with contextlib.AsyncExitStack() as stack:
        await connect_agents(server.url, ws_count=4, http_count=2, stack=stack)
        await wait_for(lambda: open_rows(database_url) == 6, timeout=10)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    assert open_rows(database_url) == 6  # the crash left them open
    assert query(database_url, "SELECT count(*) FROM agents WHERE status = 'online'") == [(6,)]

    again = launch()
    await again.ready()  # repair runs before the listener accepts anyone
    assert open_rows(database_url) == 0
    rows = query(
        database_url,
        "SELECT disconnect_reason, disconnected_at >= connected_at FROM agent_connection_history",
    )
    assert rows == [("server restart", True)] * 6
    assert query(database_url, "SELECT count(*) FROM agents WHERE status = 'online'") == [(0,)]
    again.proc.send_signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(again.proc.wait, 15) == 0
