"""What a run reports: once a second a progress line on stderr and a timeline sample (with the
server's RSS and CPU when sampled), at the end the JSON summary."""

from __future__ import annotations

import math
import os
import resource
import sys
from dataclasses import asdict
from typing import Any

import trio

from .measure import LatencyHistogram, ProcessSampler
from .run import Simulation


async def monitor(sim: Simulation) -> None:
    """Once a second: a progress line, a timeline sample, steady-state and storm marks."""
    stats = sim.stats
    config = sim.config
    last_sent = last_recv = 0
    next_at = sim.start + 1.0
    while True:
        await trio.sleep_until(next_at)
        next_at += 1.0
        now = trio.current_time()
        t = now - sim.start
        sample: dict[str, Any] = {
            "t": round(t, 1),
            "connected": stats.connected,
            "sent_per_s": stats.messages_sent - last_sent,
            "received_per_s": stats.messages_received - last_recv,
            "p50_ms": round(stats.window.percentile(50) * 1000, 3),
            "p99_ms": round(stats.window.percentile(99) * 1000, 3),
            "max_ms": round(stats.window.max_s * 1000, 3),
            "errors": sum(stats.errors.values()),
            "reconnects": stats.reconnects,
        }
        last_sent, last_recv = stats.messages_sent, stats.messages_received
        stats.window = LatencyHistogram()
        if sim.sampler is not None:
            measured = sim.sampler.sample()
            if measured is not None:
                sample["server_rss_mb"] = round(measured[0] / 2**20, 1)
                sample["server_cpu_pct"] = round(measured[1], 1)
        # Steady once the whole fleet is on, or 10 s after the ramp: agents the server keeps
        # refusing must not leave a run without a steady window.
        if (
            sim.steady_at is None
            and sim.launched_all
            and now < sim.storm_at
            and (stats.connected >= config.agents or t >= config.ramp_s + 10.0)
        ):
            sim.mark_steady(now)
        if now < sim.storm_at:
            sim.storm_connected_before = stats.connected
        sim.timeline.append(sample)
        if config.progress:
            _progress(sample, t, config.agents)


def _progress(sample: dict[str, Any], t: float, agents: int) -> None:
    extra = ""
    if "server_rss_mb" in sample:
        extra = (
            f" server_rss_mb={sample['server_rss_mb']} server_cpu_pct={sample['server_cpu_pct']}"
        )
    sys.stderr.write(
        f"[simulate] t={t:.0f}s connected={sample['connected']}/{agents}"
        f" sent_per_s={sample['sent_per_s']} p50_ms={sample['p50_ms']}"
        f" p99_ms={sample['p99_ms']} errors={sample['errors']}"
        f" reconnects={sample['reconnects']}{extra}\n"
    )
    sys.stderr.flush()


def summary(sim: Simulation, steady_end: float, connected_at_end: int) -> dict[str, Any]:
    """The JSON summary: counts over the whole run, the steady window, the server's figures when
    it was sampled, the storm, the simulator's own cost, the config and the timeline."""
    out = _counts(sim, connected_at_end)
    out["steady"] = _steady(sim, steady_end)
    if sim.sampler is not None:
        out["server"] = _server(sim, sim.sampler, connected_at_end)
    if sim.storm_at < math.inf:
        out["storm"] = _storm(sim)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["simulator"] = {
        "pid": os.getpid(),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "max_rss_bytes": usage.ru_maxrss * 1024,
    }
    out["config"] = {k: v for k, v in asdict(sim.config).items() if k != "auth_token"}
    out["timeline"] = sim.timeline
    return out


def _counts(sim: Simulation, connected_at_end: int) -> dict[str, Any]:
    stats = sim.stats
    config = sim.config
    return {
        "agents_target": config.agents,
        "agents_connected": connected_at_end,
        "agents_connected_max": stats.connected_max,
        "ws_agents": round(config.agents * config.ws_fraction),
        "http_agents": config.agents - round(config.agents * config.ws_fraction),
        "messages_sent": stats.messages_sent,
        "messages_received": stats.messages_received,
        "heartbeats_sent": stats.heartbeats_sent,
        "goodbyes_sent": stats.goodbyes_sent,
        "config_reports_sent": stats.config_reports_sent,
        "full_states_sent": stats.full_states_sent,
        "full_state_requests": stats.full_state_requests,
        "remote_configs_applied": stats.remote_configs_applied,
        "uid_reassignments": stats.uid_reassignments,
        "sessions_opened": stats.sessions_opened,
        "reconnects": stats.reconnects,
        "churned": stats.churned,
        "errors": dict(sorted(stats.errors.items())),
        "errors_total": sum(stats.errors.values()),
        "latency_ms": stats.latency.summary_ms(),
    }


def _steady(sim: Simulation, steady_end: float) -> dict[str, Any] | None:
    """From the whole fleet connected to just before the goodbyes: the rates and costs of a
    fleet holding still, without the ramp's handshakes."""
    if sim.steady_at is None:
        return None
    duration = max(steady_end - sim.steady_at, 1e-9)
    messages = sim.received_at_end - sim.received_at_steady
    steady: dict[str, Any] = {
        "started_at_s": round(sim.steady_at - sim.start, 1),
        "duration_s": round(duration, 1),
        "messages": messages,
        "messages_per_s": round(messages / duration, 1),
        "latency_ms": sim.stats.steady.summary_ms(),
        "simulator_cpu_percent": round(
            100 * (sim.steady_sim_cpu - sim.sim_cpu_at_steady) / duration, 1
        ),
    }
    if sim.server_cpu_at_steady is not None and sim.steady_server_cpu is not None:
        cpu = sim.steady_server_cpu - sim.server_cpu_at_steady
        steady["server_cpu_percent"] = round(100 * cpu / duration, 1)
        steady["server_cpu_us_per_message"] = round(1e6 * cpu / max(messages, 1), 1)
    return steady


def _server(sim: Simulation, sampler: ProcessSampler, connected_at_end: int) -> dict[str, Any]:
    server: dict[str, Any] = {
        "pid": sampler.pid,
        "rss_start_bytes": sampler.rss_start,
        "rss_max_bytes": sampler.rss_max,
        "rss_steady_bytes": sim.rss_at_steady,
        "rss_at_end_of_hold_bytes": sim.steady_rss,
    }
    if sim.steady_rss is not None and connected_at_end:
        server["rss_per_agent_bytes"] = round(
            (sim.steady_rss - sampler.rss_start) / connected_at_end
        )
    cpu_samples = [s["server_cpu_pct"] for s in sim.timeline if "server_cpu_pct" in s]
    if cpu_samples:
        server["cpu_percent_avg"] = round(sum(cpu_samples) / len(cpu_samples), 1)
        server["cpu_percent_max"] = round(max(cpu_samples), 1)
    return server


def _storm(sim: Simulation) -> dict[str, Any]:
    recovered_at = sim.storm_recovered_at
    return {
        "at_s": round(sim.storm_at - sim.start, 1),
        "dropped": sim.stats.storm_dropped,
        "connected_before": sim.storm_connected_before,
        "recovered_after_s": None
        if recovered_at is None
        else round(recovered_at - sim.storm_at, 2),
    }
