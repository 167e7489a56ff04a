"""Benchmarks for the heartbeat timing wheel: Cython vs Python twin vs heapq baseline.

Run:
    PYTHONPATH=src python -m pytest benchmarks/bench_heartbeat.py --benchmark-only \
        -q -p no:cacheprovider

Tests whose name ends in ``_x1000`` time a batch of 1000 calls made from a plain
``for`` loop (so the reported time in microseconds is the per-call time in
nanoseconds, loop overhead included; ``test_loop_overhead_x1000`` measures that
overhead with a trivial C builtin).
"""

from __future__ import annotations

import heapq
import importlib
import operator
import os
import random
from collections.abc import Callable
from typing import Any

import pytest

from opamp_fast.native._heartbeat_py import TimingWheel as PyWheel

BATCH = 1000


class HeapWheel:
    """Baseline: heapq of (deadline, handle) with lazy deletion + dict of live deadlines."""

    def __init__(self, tick_s: float = 1.0, capacity: int = 1024, start: float = 0.0) -> None:
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, float] = {}

    def schedule(self, handle: int, deadline: float) -> None:
        self._live[handle] = deadline
        heapq.heappush(self._heap, (deadline, handle))
        if len(self._heap) > 2 * len(self._live) + 1024:  # compact stale entries
            self._heap = [(d, h) for h, d in self._live.items()]
            heapq.heapify(self._heap)

    def cancel(self, handle: int) -> bool:
        return self._live.pop(handle, None) is not None

    def advance(self, now: float) -> list[int]:
        heap = self._heap
        live = self._live
        out: list[int] = []
        while heap and heap[0][0] <= now:
            d, h = heapq.heappop(heap)
            if live.get(h) == d:
                del live[h]
                out.append(h)
        return out

    def __len__(self) -> int:
        return len(self._live)


def _cython_wheel() -> type:
    if os.environ.get("OPAMP_FAST_NO_EXTENSIONS"):
        pytest.skip("OPAMP_FAST_NO_EXTENSIONS is set")
    try:
        return importlib.import_module("opamp_fast.native._heartbeat").TimingWheel  # type: ignore[no-any-return]
    except ImportError as exc:
        pytest.fail(f"compiled opamp_fast.native._heartbeat is not importable: {exc}")


IMPLS: dict[str, Callable[[], type]] = {
    "cython": _cython_wheel,
    "python": lambda: PyWheel,
    "heap": lambda: HeapWheel,
}


@pytest.fixture(params=list(IMPLS))
def wheel_cls(request: pytest.FixtureRequest) -> type:
    return IMPLS[request.param]()


def _filled(cls: type, n: int, lo: float, hi: float, seed: int = 1) -> Any:
    rng = random.Random(seed)
    w = cls(1.0, n, 0.0)
    schedule = w.schedule
    for h in range(n):
        schedule(h, rng.uniform(lo, hi))
    return w


# -- refresh ------------------------------------------------------------------


@pytest.mark.parametrize("n", [100_000, 1_000_000], ids=["100k", "1M"])
def test_refresh_one_handle(benchmark: Any, wheel_cls: type, n: int) -> None:
    """schedule() of one already-scheduled handle (same target tick: no relink)."""
    w = _filled(wheel_cls, n, 30.0, 90.0)
    h = n // 2
    benchmark(w.schedule, h, 95.5)
    assert len(w) == n


@pytest.mark.parametrize("n", [100_000, 1_000_000], ids=["100k", "1M"])
def test_refresh_x1000(benchmark: Any, wheel_cls: type, n: int) -> None:
    """1000 refreshes of random scheduled handles, each moved to another tick (relink)."""
    w = _filled(wheel_cls, n, 30.0, 90.0)
    rng = random.Random(2)
    handles = rng.sample(range(n), BATCH)
    batches = [
        [(h, base + rng.random()) for h in handles] for base in (100.0, 300.0)
    ]  # alternate between level-0 and level-1 slots
    flip = [0]

    def setup() -> tuple[tuple[list[tuple[int, float]]], dict[str, Any]]:
        flip[0] ^= 1
        return (batches[flip[0]],), {}

    def run(pairs: list[tuple[int, float]]) -> None:
        schedule = w.schedule
        for h, d in pairs:
            schedule(h, d)

    benchmark.pedantic(run, setup=setup, rounds=2000, warmup_rounds=20)
    assert len(w) == n


def test_loop_overhead_x1000(benchmark: Any) -> None:
    """Same loop as test_refresh_x1000 calling a trivial 2-argument C builtin."""
    pairs = [(h, 100.0 + h) for h in range(BATCH)]
    noop = operator.is_

    def run() -> None:
        for h, d in pairs:
            noop(h, d)

    benchmark(run)


# -- advance --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1_000, 1_000_000], ids=["1k", "1M"])
def test_advance_empty_x1000(benchmark: Any, wheel_cls: type, n: int) -> None:
    """1000 one-tick advances with nothing expiring (deadlines 2**28..2**30 ticks away)."""
    w = _filled(wheel_cls, n, 2.0**28, 2.0**30)
    t = [0.0]

    def setup() -> tuple[tuple[list[float]], dict[str, Any]]:
        start = t[0]
        t[0] += BATCH
        return ([start + i + 1 for i in range(BATCH)],), {}

    def run(nows: list[float]) -> None:
        advance = w.advance
        for now in nows:
            if advance(now):
                raise AssertionError("unexpected expiry")

    benchmark.pedantic(run, setup=setup, rounds=500, warmup_rounds=5)
    assert len(w) == n


def test_advance_1pct_expiring_1M(benchmark: Any, wheel_cls: type) -> None:
    """One-tick advance at 1M handles expiring 1% (~10k) per call (deadlines 1000..1100)."""
    n = 1_000_000
    w = _filled(wheel_cls, n, 999.0, 1099.0)  # ticks 999..1099, ~10k per tick
    w.advance(998.0)
    t = [998.0]
    expired: list[int] = []

    def setup() -> tuple[tuple[float], dict[str, Any]]:
        t[0] += 1.0
        return (t[0],), {}

    def run(now: float) -> None:
        expired.append(len(w.advance(now)))

    benchmark.pedantic(run, setup=setup, rounds=100, warmup_rounds=0)
    assert sum(expired) == n - len(w)
    assert min(expired[1:]) > 8_000
