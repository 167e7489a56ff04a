"""The simulator against the live server: a small WS + HTTP fleet, counts and zero errors."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from opamp_fast.protocol import REMOTE_CONFIG_APPLIED, Transport
from opamp_fast.sim import SimConfig, run_simulation
from tests.helpers.agents import wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def anyio_backend() -> str:
    """The simulator is a trio program (``opamp-fast simulate``): run it, and the server beside
    it in this process, on trio."""
    return "trio"


@pytest.fixture
async def server(start_server: Any, make_settings: Any) -> Any:
    """The server, with shedding by event-loop lag off: the simulator runs on the same loop, so
    its own work would count as the server's lag and newcomers would get 503s on a busy box."""
    return await start_server(make_settings(max_loop_lag_s=3600.0))


async def test_mixed_fleet_summary(server) -> None:
    config = SimConfig(
        url=server.url + "/v1/opamp",
        agents=20,
        duration_s=3.0,
        ramp_s=0.5,
        ws_fraction=0.5,
        heartbeat_s=0.25,
        override_heartbeat=True,
        progress=False,
    )
    summary = await run_simulation(config)

    assert summary["errors"] == {} and summary["errors_total"] == 0
    assert summary["agents_target"] == summary["agents_connected"] == 20
    assert (summary["ws_agents"], summary["http_agents"]) == (10, 10)
    assert summary["sessions_opened"] == 20 and summary["reconnects"] == 0
    assert summary["full_states_sent"] == 20 and summary["goodbyes_sent"] == 20
    assert summary["heartbeats_sent"] >= 20 * 4  # ~2.5 s of 0.25 s beats each, spread
    assert summary["messages_sent"] == summary["messages_received"]
    assert summary["messages_sent"] == (
        summary["full_states_sent"] + summary["heartbeats_sent"] + summary["goodbyes_sent"]
    )
    latency = summary["latency_ms"]
    assert latency["count"] == summary["messages_sent"] - summary["goodbyes_sent"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert summary["steady"] is not None and summary["timeline"]

    stats = server.services.registry.statistics()
    assert stats.known == 20 and stats.online == 0  # all said goodbye
    for record in server.services.registry:
        assert record.disconnect_reason == "agent_disconnect"
        assert record.state.description is not None


async def test_remote_config_is_applied_and_reported(server) -> None:
    """WS agents get the config pushed, HTTP agents on their next poll; all report APPLIED."""
    registry = server.services.registry
    config = SimConfig(
        url=server.url + "/v1/opamp",
        agents=6,
        duration_s=3.0,
        ramp_s=0.2,
        ws_fraction=0.5,
        heartbeat_s=0.2,
        override_heartbeat=True,
        progress=False,
    )
    result: dict[str, object] = {}
    async with anyio.create_task_group() as nursery:

        async def simulate() -> None:
            result.update(await run_simulation(config))

        nursery.start_soon(simulate)
        await wait_for(lambda: registry.online_count == 6, timeout=5)
        files = {"collector.yaml": (b"exporters:\n  debug: {}\n", "text/yaml")}
        hashes = {}
        for record in list(registry.online_records()):
            hashes[record.uid] = server.services.fleet.assign_remote_config(record.uid, files)

        def all_applied() -> bool:
            return all(
                (rcs := registry.get(uid).state.remote_config_status) is not None
                and rcs.last_remote_config_hash == h
                and rcs.status == REMOTE_CONFIG_APPLIED
                for uid, h in hashes.items()
            )

        await wait_for(all_applied, timeout=5)
        transports = {registry.get(uid).transport for uid in hashes}
        assert transports == {Transport.WS, Transport.HTTP}
    assert result["remote_configs_applied"] == 6
    assert result["config_reports_sent"] == 6
    assert result["errors_total"] == 0


async def test_storm_drops_and_reconnects_everyone(server) -> None:
    config = SimConfig(
        url=server.url + "/v1/opamp",
        agents=20,
        duration_s=3.0,
        ramp_s=0.3,
        storm_at_s=1.5,
        heartbeat_s=0.5,
        override_heartbeat=True,
        progress=False,
    )
    summary = await run_simulation(config)
    storm = summary["storm"]
    assert storm["dropped"] == storm["connected_before"] == 20
    assert storm["recovered_after_s"] is not None and storm["recovered_after_s"] < 1.0
    assert summary["sessions_opened"] == 40 and summary["reconnects"] == 20
    assert summary["errors_total"] == 0 and summary["agents_connected"] == 20
    assert server.services.registry.statistics().online == 0


async def test_churn_drops_and_reconnects_a_share_each_minute(server) -> None:
    # 100 % a minute at a 0.5 s heartbeat: each heartbeat drops with probability 1/120, so
    # 20 agents over ~3.5 s of heartbeats (~140 heartbeats) churn about once or twice.
    config = SimConfig(
        url=server.url + "/v1/opamp",
        agents=20,
        duration_s=4.0,
        ramp_s=0.2,
        churn_per_min=1.0,
        heartbeat_s=0.5,
        override_heartbeat=True,
        seed=7,
        progress=False,
    )
    summary = await run_simulation(config)
    assert summary["churned"] >= 1
    # Every drop is a new session at once, never an error, and the server saw them all.
    assert summary["reconnects"] == summary["churned"]
    assert summary["sessions_opened"] == 20 + summary["churned"]
    assert summary["errors_total"] == 0 and summary["agents_connected"] == 20
