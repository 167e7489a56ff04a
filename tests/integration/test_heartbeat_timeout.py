"""A silent agent is marked offline within timeout + one tick, with reason and time, its
WebSocket closed and its history row closed; a talking agent stays online."""

from __future__ import annotations

import time

import anyio
import psycopg
import pytest

from tests.helpers.agents import HTTPAgent, open_ws_agent, wait_for
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.helpers.wsclient import ConnectionClosed

pytestmark = pytest.mark.postgres

TIMEOUT_S = 1.0
TICK_S = 0.1


@pytest.fixture
async def fast_server(start_server, make_settings):
    return await start_server(
        make_settings(
            heartbeat_interval_s=1,
            heartbeat_timeout_s=TIMEOUT_S,
            heartbeat_timeout_factor=1.0,
            heartbeat_tick_s=TICK_S,
        )
    )


async def test_silent_ws_agent_times_out(fast_server, database_url) -> None:
    import httpx

    async with (
        open_ws_agent(fast_server.url) as agent,
        httpx.AsyncClient(base_url=fast_server.url) as http,
    ):
        chatty = HTTPAgent(http)
        await chatty.full_state()
        await agent.full_state()
        record = fast_server.services.registry.get(agent.uid)
        last = anyio.current_time()
        deadline = last + TIMEOUT_S + TICK_S
        while record.online:
            await chatty.heartbeat()  # the other agent keeps talking
            await anyio.sleep(0.05)
        went_offline = anyio.current_time()
        assert went_offline <= deadline + 0.15  # timeout + one tick (+ scheduling slack)
        assert went_offline >= last + TIMEOUT_S - 0.05
        assert record.disconnect_reason == "heartbeat timeout"
        assert abs(record.disconnected_at - time.time()) < 1
        assert fast_server.services.registry.get(chatty.uid).online
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(3):
                await agent.ws.get_message()
        assert info.value.reason.code == 4001

    def row():
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "SELECT a.status, a.disconnect_reason, h.disconnect_reason "
                "FROM agents a JOIN agent_connection_history h USING (instance_uid) "
                "WHERE a.instance_uid = %s",
                (agent.uid,),
            ).fetchone()

    await wait_for(lambda: row() == ("offline", "heartbeat timeout", "heartbeat timeout"), 5)


async def test_silent_http_agent_times_out_and_revives(fast_server) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=fast_server.url) as http:
        agent = HTTPAgent(http)
        await agent.full_state()
        record = fast_server.services.registry.get(agent.uid)
        await wait_for(lambda: not record.online, timeout=TIMEOUT_S + 1)
        assert record.disconnect_reason == "heartbeat timeout"
        await agent.heartbeat()
        assert record.online
        assert fast_server.services.registry.statistics().status_changes == {
            ("new", "online"): 1,
            ("online", "offline"): 1,
            ("offline", "online"): 1,
        }
