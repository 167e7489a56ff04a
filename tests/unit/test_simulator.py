"""The simulator's pure parts: histogram, flags, agent messages and reactions (no sockets)."""

from __future__ import annotations

import argparse
import random

import pytest

from opamp_fast.protocol import REMOTE_CONFIG_APPLIED, SERVER_FLAG_REPORT_FULL_STATE, pb
from opamp_fast.sim import (
    DEFAULT_CAPABILITIES,
    LatencyHistogram,
    SimConfig,
    SimulatorError,
    add_arguments,
    config_from_args,
    parse_source_addrs,
)
from opamp_fast.sim.agent import Agent
from opamp_fast.sim.measure import Stats
from opamp_fast.sim.run import Simulation


def test_histogram_percentiles_within_two_percent() -> None:
    hist = LatencyHistogram()
    samples = [i / 10_000 for i in range(1, 10_001)]  # 0.1 ms .. 1 s, uniform
    random.Random(3).shuffle(samples)
    for s in samples:
        hist.record(s)
    assert hist.count == 10_000
    for q, exact in ((50, 0.5), (95, 0.95), (99, 0.99)):
        assert exact <= hist.percentile(q) <= exact * 1.021
    assert hist.percentile(100) == pytest.approx(1.0)
    assert hist.max_s == 1.0


def test_histogram_is_bounded_and_merges() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record(0.0)  # clamped into the first bucket
    a.record(10_000.0)  # beyond the last edge: the last bucket, exact max kept
    b.record(0.002)
    a.merge(b)
    assert len(a.counts) == LatencyHistogram.BUCKETS < 1200
    assert a.count == 3
    assert a.max_s == 10_000.0
    assert a.percentile(50) == pytest.approx(0.002, rel=0.021)
    assert LatencyHistogram().percentile(99) == 0.0
    assert LatencyHistogram().summary_ms()["count"] == 0


def test_source_address_ranges() -> None:
    assert parse_source_addrs("127.0.0.2-127.0.0.4") == ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    assert parse_source_addrs("127.0.0.9, 127.0.0.7") == ("127.0.0.9", "127.0.0.7")
    assert parse_source_addrs("") == ()
    for bad in ("10.0.0.1", "127.0.0.5-127.0.0.2", "nonsense"):
        with pytest.raises(SimulatorError):
            parse_source_addrs(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "http://192.0.2.10:4320/v1/opamp"},  # not loopback
        {"url": "https://127.0.0.1/v1/opamp"},
        {"agents": 0},
        {"agents": 200_001},
        {"duration_s": 0},
        {"duration_s": 3601},
        {"ramp_s": 100, "duration_s": 10},
        {"ws_fraction": 1.5},
        {"storm_at_s": 20, "duration_s": 10},
        {"churn_per_min": 1.5},
        {"source_addrs": ("10.1.1.1",)},
    ],
)
def test_config_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(SimulatorError):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_cli_flags_build_a_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--duration-s", "5", "--agents", "10", "--ws-fraction", "0.9", "--capabilities", "0x3007",
         "--source-addrs", "127.0.0.2-127.0.0.3", "--heartbeat-s", "1", "--override-heartbeat"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.agents == 10 and config.capabilities == 0x3007
    assert config.source_addrs == ("127.0.0.2", "127.0.0.3")
    assert config.override_heartbeat and config.heartbeat_s == 1.0
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --duration-s is required: every run is bounded


def test_fleet_split_and_identities() -> None:
    sim = Simulation(SimConfig(agents=100, ws_fraction=0.9))
    agents = sim.make_agents()
    assert sum(a.ws for a in agents) == 90
    assert len({a.uid for a in agents}) == 100
    assert all(a.caps == DEFAULT_CAPABILITIES == 0x3907 for a in agents)
    assert [a.uid for a in Simulation(SimConfig(agents=100)).make_agents()] == [
        a.uid for a in agents
    ]  # the seed makes fleets reproducible


def test_full_state_then_heartbeats() -> None:
    stats = Stats()
    agent = Agent(7, bytes(range(16)), True, DEFAULT_CAPABILITIES, "checkout")
    first = pb.AgentToServer.FromString(agent.next_message(stats))
    attrs = {kv.key: kv.value.string_value for kv in first.agent_description.identifying_attributes}
    other = {kv.key for kv in first.agent_description.non_identifying_attributes}
    assert attrs["service.name"] == "checkout"
    assert attrs["service.instance.id"] == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert {"host.name", "os.type", "host.arch"} <= other
    assert first.health.healthy and first.effective_config.config_map.config_map[""].body
    assert first.capabilities == DEFAULT_CAPABILITIES and first.sequence_num == 0
    beat = pb.AgentToServer.FromString(agent.next_message(stats))
    assert beat.sequence_num == 1 and not beat.HasField("agent_description")
    bye = pb.AgentToServer.FromString(agent.goodbye())
    assert bye.HasField("agent_disconnect") and bye.sequence_num == 2
    assert (stats.full_states_sent, stats.heartbeats_sent) == (1, 1)


def test_reactions_to_the_server() -> None:
    sim = Simulation(SimConfig())
    stats = sim.stats
    agent = Agent(0, b"u" * 16, True, DEFAULT_CAPABILITIES, "cart")
    agent.next_message(stats)

    offer = pb.ServerToAgent(instance_uid=agent.uid, capabilities=0x37)
    offer.connection_settings.opamp.heartbeat_interval_seconds = 7
    assert not agent.handle(offer, stats, sim.config)
    assert agent.interval_s == 7.0

    ask = pb.ServerToAgent(instance_uid=agent.uid, flags=SERVER_FLAG_REPORT_FULL_STATE)
    assert agent.handle(ask, stats, sim.config)
    assert pb.AgentToServer.FromString(agent.next_message(stats)).HasField("agent_description")

    push = pb.ServerToAgent(instance_uid=agent.uid)
    push.remote_config.config_hash = b"h" * 32
    push.remote_config.config.config_map["a.yaml"].body = b"exporters: {}\n"
    assert agent.handle(push, stats, sim.config)
    report = pb.AgentToServer.FromString(agent.next_message(stats))
    assert report.remote_config_status.last_remote_config_hash == b"h" * 32
    assert report.remote_config_status.status == REMOTE_CONFIG_APPLIED
    assert report.effective_config.config_map.config_map[""].body == b"exporters: {}\n"
    assert not agent.handle(push, stats, sim.config)  # the same config again: nothing to apply
    assert stats.remote_configs_applied == 1

    renamed = pb.ServerToAgent(instance_uid=agent.uid)
    renamed.agent_identification.new_instance_uid = b"n" * 16
    assert agent.handle(renamed, stats, sim.config)
    assert agent.uid == b"n" * 16

    refused = pb.ServerToAgent(instance_uid=agent.uid)
    refused.error_response.type = pb.ServerErrorResponseType_Unavailable
    refused.error_response.retry_info.retry_after_nanoseconds = 3_000_000_000
    with pytest.raises(Exception, match="error_response_2") as info:
        agent.handle(refused, stats, sim.config)
    assert info.value.retry_after_s == 3.0  # type: ignore[attr-defined]


def test_override_ignores_the_offer() -> None:
    sim = Simulation(SimConfig(heartbeat_s=1.0, override_heartbeat=True))
    agent = Agent(0, b"u" * 16, True, DEFAULT_CAPABILITIES, "cart")
    offer = pb.ServerToAgent()
    offer.connection_settings.opamp.heartbeat_interval_seconds = 30
    agent.handle(offer, sim.stats, sim.config)
    assert agent.interval_s == 0.0  # falls back to heartbeat_s


def test_backoff_is_jittered_exponential_and_capped() -> None:
    sim = Simulation(SimConfig(backoff_initial_s=0.5, backoff_max_s=4.0))
    agent = Agent(0, b"u" * 16, True, DEFAULT_CAPABILITIES, "cart")
    for attempts, cap in ((0, 0.5), (1, 1.0), (3, 4.0), (500, 4.0)):
        agent.attempts = attempts
        delays = [sim.backoff_s(agent, None) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # full jitter spreads over the whole range
    # Retry-After wins over the exponent, still capped, with half jitter.
    assert all(2.0 <= sim.backoff_s(agent, 10.0) <= 4.0 for _ in range(50))


def test_every_name_of_the_package_resolves() -> None:
    import opamp_fast.sim as package

    assert sorted(package.__all__) == sorted(package._EXPORTS)
    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError):
        package.not_a_name  # noqa: B018


def test_the_command_line_does_not_import_the_simulator() -> None:
    """``opamp-fast serve`` (and every worker it starts) builds the same parser as
    ``opamp-fast simulate``: the simulator and trio must not come with the flags."""
    import subprocess
    import sys

    probe = (
        "import sys; from opamp_fast.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('trio', 'wsproto', 'h11', 'opamp_fast.sim.fleet') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
