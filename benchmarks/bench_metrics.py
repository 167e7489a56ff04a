"""``/metrics`` scrape cost with 100k registered agents.

Run:
    python -m pytest benchmarks/bench_metrics.py --benchmark-only -q -p no:cacheprovider \
        --benchmark-columns=min,median,max,rounds

A real :class:`~opamp_fast.fleet.registry.Registry` is filled through its public API (``ensure`` +
``mark_online``, then ``mark_offline`` for 10 %), with WebSocket and HTTP agents and last-seen
times spread over two heartbeat intervals, so ``agents_stale`` has work to do. Timed:

* ``snapshot``: what a scrape costs the event loop (the part that must run on it);
* ``scrape``: collect + ``generate_latest`` of the whole registry, process metrics included
  (what the worker thread does), with per-agent series off (100k agents > the 10k default cap)
  and on (cap raised to 100k), and at 10k agents with the default cap (series on);
* ``loop_stall``: the longest a 1 ms ticker on the event loop was late while ``render()`` formatted
  100k per-agent series in its worker thread (reported in ``extra_info``, not the timing).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from opamp_fast.fleet.registry import Registry
from opamp_fast.observability.metrics import MetricsExporter
from opamp_fast.protocol import Session, Transport

WALL0 = 1_700_000_000.0
INTERVAL = 30


def filled_registry(n: int) -> Registry:
    registry = Registry(timeout_s=60.0, timeout_factor=2.5, tick_s=1.0, start_mono=0.0, capacity=n)
    for i in range(n):
        uid = os.urandom(16)
        record, _ = registry.ensure(uid, uid)
        transport = Transport.WS if i % 2 else Transport.HTTP
        at = (i % 600) / 10  # last seen 0..60 s after WALL0: some are stale at WALL0 + 60
        registry.mark_online(
            record,
            session=Session(transport),
            connection=None,
            transport=transport,
            remote_addr="10.0.0.1:4000",
            heartbeat_interval_s=INTERVAL,
            mono=at,
            wall=WALL0 + at,
        )
        if i % 10 == 0:
            registry.mark_offline(record, wall=WALL0 + at + 1, reason="connection closed")
    return registry


@pytest.fixture(scope="module")
def registry_100k() -> Registry:
    return filled_registry(100_000)


@pytest.fixture(scope="module")
def registry_10k() -> Registry:
    return filled_registry(10_000)


def exporter(registry: Registry, cap: int) -> MetricsExporter:
    return MetricsExporter(
        registry=registry,
        heartbeat_interval_s=INTERVAL,
        agent_series_max=cap,
        clock=lambda: WALL0 + 60,
    )


def test_snapshot_100k(benchmark: Any, registry_100k: Registry) -> None:
    ex = exporter(registry_100k, 10_000)
    snap = benchmark(ex.snapshot)
    assert len(snap.records) == 100_000


@pytest.mark.parametrize(("cap", "label"), [(10_000, "series_off"), (100_000, "series_on")])
def test_scrape_100k(benchmark: Any, registry_100k: Registry, cap: int, label: str) -> None:
    ex = exporter(registry_100k, cap)
    body = benchmark(ex.generate)
    benchmark.extra_info["bytes"] = len(body)
    assert (b"agent_last_seen_seconds{" in body) == (label == "series_on")


def test_scrape_10k_default_cap(benchmark: Any, registry_10k: Registry) -> None:
    ex = exporter(registry_10k, 10_000)
    body = benchmark(ex.generate)
    benchmark.extra_info["bytes"] = len(body)
    assert b"agent_last_seen_seconds{" in body


def test_loop_stall_while_rendering_100k_series(benchmark: Any, registry_100k: Registry) -> None:
    """How late a 1 ms ticker on the loop gets while a 100k-series scrape renders."""
    worst: list[float] = []

    async def scrape_once() -> None:
        ex = exporter(registry_100k, 100_000)  # built in the run: render hops back to this loop
        lag = 0.0
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal lag
            while not done.is_set():
                before = anyio.current_time()
                await anyio.sleep(0.001)
                lag = max(lag, anyio.current_time() - before - 0.001)

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(ticker)
            await ex.render()
            done.set()
        worst.append(lag)

    benchmark.pedantic(
        lambda: anyio.run(scrape_once, backend_options={"use_uvloop": True}), rounds=3, iterations=1
    )
    benchmark.extra_info["max_loop_lag_ms"] = round(1000 * max(worst), 1)
    print(f"\nmax loop lag while rendering 100k series: {1000 * max(worst):.1f} ms")
