"""The fleet from start to goodbye: the ramp, each agent's reconnect loop, and the run that
holds them all for ``duration_s`` and returns the summary."""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any, Final

import trio

from .agent import Agent
from .config import SimConfig, SimulatorError
from .http_session import http_connection
from .net import Closed, End, Storm
from .report import monitor, summary
from .run import Simulation
from .ws_session import ws_connection

FD_RESERVE: Final = 64  # epoll, stdio, psutil, the odd DNS socket


async def run_agent(sim: Simulation, agent: Agent) -> None:
    """One agent for the whole run: sessions one after another, reconnecting at once after a
    storm or a churn drop and with backoff after a failure, until the run ends."""
    stats = sim.stats
    stats.started += 1
    first_attempt = True
    while trio.current_time() < sim.end_at:
        if not first_attempt:
            stats.reconnects += 1
        first_attempt = False
        retry_after: float | None = None
        try:
            if agent.ws:
                await ws_connection(sim, agent)
            else:
                await http_connection(sim, agent)
        except End:
            return
        except Storm:
            agent.attempts = 0
            continue  # reconnect at once: that is the storm
        except Closed as closed:
            if closed.kind:
                stats.error(closed.kind)
            retry_after = closed.retry_after_s
        delay = sim.backoff_s(agent, retry_after)
        agent.attempts += 1
        if trio.current_time() + delay >= sim.end_at:
            return
        await trio.sleep(delay)


async def launch(sim: Simulation, nursery: trio.Nursery, agents: list[Agent]) -> None:
    """Start agent i at ``start + ramp_s * i / N`` plus jitter, in 10 ms batches (no sleeping
    task per agent while waiting)."""
    config = sim.config
    slot = config.ramp_s / config.agents
    starts = sorted((sim.start + slot * (i + sim.rng.random()), i) for i in range(config.agents))
    pos = 0
    while pos < len(starts):
        now = trio.current_time()
        while pos < len(starts) and starts[pos][0] <= now:
            nursery.start_soon(run_agent, sim, agents[starts[pos][1]])
            pos += 1
        if pos < len(starts):
            await trio.sleep_until(max(starts[pos][0], now + 0.01))
    sim.launched_all = True


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; refuse runs that cannot fit.

    Every agent holds one socket, so a fleet larger than the hard limit would fail mid-run with
    EMFILE; better to say so up front (raising the hard limit needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed + FD_RESERVE > soft:
        raise SimulatorError(
            f"{needed} agents need about {needed + FD_RESERVE} file descriptors but "
            f"RLIMIT_NOFILE is {soft} (hard {hard}); raise the hard limit or run several "
            "simulator processes"
        )
    return int(soft)


async def run_simulation(
    config: SimConfig, *, clock: Callable[[], float] = trio.current_time
) -> dict[str, Any]:
    """Run the fleet for ``config.duration_s`` and return the summary (``report.summary``).

    Resource handling: every socket is closed before this returns; agents still connected at
    the end say goodbye (bounded by ``close_timeout_s``), then everything is cancelled after a
    further grace of ``close_timeout_s + 5`` seconds.
    """
    raise_fd_limit(config.agents)
    sim = Simulation(config)
    agents = sim.make_agents()
    sim.start = clock()
    sim.end_at = sim.start + config.duration_s
    if config.storm_at_s is not None:
        sim.storm_at = sim.start + config.storm_at_s
    connected_at_end = 0
    async with trio.open_nursery() as outer:
        outer.start_soon(monitor, sim)

        async def mark_end() -> None:
            nonlocal connected_at_end
            await trio.sleep_until(sim.end_at - 0.001)
            connected_at_end = sim.end_of_hold()

        with trio.move_on_at(sim.end_at + config.close_timeout_s + 5.0):
            async with trio.open_nursery() as fleet:
                fleet.start_soon(mark_end)
                await launch(sim, fleet, agents)
        outer.cancel_scope.cancel()
    end = sim.end_at if sim.steady_at is not None else clock()
    return summary(sim, end, connected_at_end)
