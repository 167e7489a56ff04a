"""One grid for a process's periodic work, so that its timers wake the process together.

A server process has about ten periodic tasks: the loop-lag sampler, the heartbeat sweeper, the
connections' timing wheel, the batch writer's flush, the package-status and connection-settings
writers, the GC freezer, the rollout driver. Each sleeping its own interval from its own start,
they woke an idle process ~19 times a second, each wake-up an ``epoll_wait`` return, a context
switch and a pass of the loop; with ``--workers`` on fewer cores, that fixed price is paid per
worker. On one grid, every task wakes at the next multiple of its interval: the timers that fall
due together run in one pass of the loop (intervals that divide one another share their ticks).

The grid's phase is random per process, so that the workers of one machine do not all wake at
the same instant.
"""

from __future__ import annotations

import math
import random

import anyio

__all__ = ["next_tick", "sleep_to_tick"]

_PHASE = random.random()  # seconds; the same for every task of this process


def next_tick(interval_s: float, now: float, phase: float = _PHASE) -> float:
    """The first tick of ``interval_s`` strictly after ``now`` (the event loop's clock)."""
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    return phase + (math.floor((now - phase) / interval_s) + 1) * interval_s


async def sleep_to_tick(interval_s: float) -> float:
    """Sleep to the next tick of ``interval_s``; return how late the loop woke (seconds)."""
    deadline = next_tick(interval_s, anyio.current_time())
    await anyio.sleep_until(deadline)
    return max(0.0, anyio.current_time() - deadline)
