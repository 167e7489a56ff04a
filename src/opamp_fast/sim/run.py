"""The state every agent task of a run shares, and the decisions drawn from the run's one random
generator (agent ids, reconnect backoff, churn, heartbeat spread): one seed, one reproducible
fleet. All agent tasks run on one trio thread, so plain attributes need no locks."""

from __future__ import annotations

import math
import random
from typing import Any

from .agent import SERVICES, Agent
from .config import SimConfig, resolve_target
from .measure import ProcessSampler, Stats, own_cpu_seconds


class Simulation:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.target = resolve_target(config.url)
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.start = 0.0
        self.end_at = math.inf
        self.storm_at = math.inf
        self.storm_recovered_at: float | None = None
        self.storm_connected_before = 0
        self.steady_at: float | None = None
        self.launched_all = False
        self._source_index = 0
        self.headers: list[tuple[bytes, bytes]] = []
        if config.auth_token:
            self.headers.append((b"Authorization", f"Bearer {config.auth_token}".encode()))
        self.sampler = ProcessSampler(config.server_pid) if config.server_pid else None
        self.timeline: list[dict[str, Any]] = []
        self.server_cpu_at_steady: float | None = None
        self.received_at_steady = 0
        self.sim_cpu_at_steady = 0.0
        self.rss_at_steady: int | None = None
        self.steady_sim_cpu = 0.0
        self.steady_server_cpu: float | None = None
        self.steady_rss: int | None = None
        self.received_at_end = 0

    def make_agents(self) -> list[Agent]:
        config = self.config
        rng = self.rng
        n_ws = round(config.agents * config.ws_fraction)
        agents = []
        for i in range(config.agents):
            uid = bytearray(rng.randbytes(16))
            uid[6] = 0x40 | (uid[6] & 0x0F)  # UUIDv4 layout: readable ids in the REST API
            uid[8] = 0x80 | (uid[8] & 0x3F)
            # Interleave transports so WS and HTTP agents ramp up together.
            ws = (i * n_ws) // config.agents != ((i + 1) * n_ws) // config.agents
            service = SERVICES[i % len(SERVICES)]
            agents.append(Agent(i, bytes(uid), ws, config.capabilities, service))
        return agents

    def local_address(self) -> str | None:
        addrs = self.config.source_addrs
        if not addrs:
            return None
        self._source_index = (self._source_index + 1) % len(addrs)
        return addrs[self._source_index]

    def backoff_s(self, agent: Agent, retry_after_s: float | None) -> float:
        """Exponential backoff with full jitter (AWS style), or the server's Retry-After."""
        if retry_after_s is not None and retry_after_s > 0:
            jitter = 0.5 + 0.5 * self.rng.random()
            return float(min(retry_after_s, self.config.backoff_max_s) * jitter)
        exponent = min(agent.attempts, 30)
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2.0**exponent)
        return cap * self.rng.random()

    def churns(self, interval_s: float) -> bool:
        """Whether an agent drops its connection at this heartbeat: ``churn_per_min`` of the
        WebSocket fleet a minute, spread over the heartbeats of that minute."""
        rate = self.config.churn_per_min
        return rate > 0 and self.rng.random() < rate * interval_s / 60.0

    def heartbeat_s(self, agent: Agent) -> float:
        """The agent's heartbeat interval: the server's offer, else the configured one."""
        return agent.interval_s or self.config.heartbeat_s

    def went_online(self, agent: Agent, now: float) -> float:
        """A session got its first response: count it, note when a storm has fully recovered,
        and return when its first heartbeat is due. That is spread uniformly over one interval
        by default so a fleet that connected within seconds doesn't beat in lockstep forever."""
        agent.attempts = 0
        stats = self.stats
        stats.online()
        if (
            now >= self.storm_at
            and self.storm_recovered_at is None
            and stats.connected >= self.storm_connected_before
        ):
            self.storm_recovered_at = now
        interval = self.heartbeat_s(agent)
        return now + (interval * self.rng.random() if self.config.spread_heartbeats else interval)

    def mark_steady(self, now: float) -> None:
        """The whole fleet is connected: start the steady-state window."""
        self.steady_at = now
        self.stats.steady_on = True
        self.received_at_steady = self.stats.messages_received
        self.sim_cpu_at_steady = own_cpu_seconds()
        if self.sampler is not None:
            try:
                self.server_cpu_at_steady = self.sampler.cpu_seconds()
                self.rss_at_steady = self.sampler.rss()
            except self.sampler.error:
                self.server_cpu_at_steady = None

    def end_of_hold(self) -> int:
        """Snapshot the steady-state figures just before the fleet says goodbye."""
        self.steady_sim_cpu = own_cpu_seconds()
        self.received_at_end = self.stats.messages_received
        self.stats.steady_on = False
        if self.sampler is not None:
            try:
                self.steady_server_cpu = self.sampler.cpu_seconds()
                self.steady_rss = self.sampler.rss()
            except self.sampler.error:
                pass
        return self.stats.connected
