"""The process's tick grid (ticks.py): periodic tasks wake on shared instants."""

from __future__ import annotations

import math
import time

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opamp_fast.ticks import next_tick, sleep_to_tick
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends


def test_the_next_tick_is_the_first_grid_point_strictly_after_now() -> None:
    assert next_tick(1.0, 10.3, phase=0.2) == pytest.approx(11.2)
    assert next_tick(1.0, 11.2, phase=0.2) == pytest.approx(12.2)  # on a tick: the next one
    assert next_tick(0.25, 10.3, phase=0.2) == pytest.approx(10.45)


@given(
    now=st.floats(min_value=0.0, max_value=1e6),
    phase=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    fine=st.sampled_from([0.1, 0.25, 0.5]),
)
def test_a_coarse_tick_is_also_a_tick_of_every_interval_that_divides_it(
    now: float, phase: float, fine: float
) -> None:
    """What lets the 1 s timers share a wake-up with the 0.25 s loop-lag sampler."""
    coarse = next_tick(1.0, now, phase)
    assert now < coarse <= now + 1.0
    steps = (coarse - phase) / fine
    assert math.isclose(steps, round(steps), abs_tol=1e-6)
    assert 0 < next_tick(fine, now, phase) - now <= fine + 1e-6


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        next_tick(0.0, 1.0)


async def test_sleeping_to_a_tick_returns_how_late_the_loop_woke() -> None:
    assert await sleep_to_tick(0.01) >= 0.0
    late = 0.0
    async with anyio.create_task_group() as tg:

        async def sleeper() -> None:
            nonlocal late
            late = await sleep_to_tick(0.2)  # its tick is at most 0.2 s away

        tg.start_soon(sleeper)
        await anyio.sleep(0.001)  # the sleeper has run to its sleep (trio orders tasks at random)
        time.sleep(0.3)  # noqa: ASYNC251 - the point: the loop blocked past the sleeper's tick
    assert late >= 0.05
