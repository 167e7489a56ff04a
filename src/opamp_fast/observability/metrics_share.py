"""``/metrics`` of all workers from any of them (``--workers``).

The workers share one port, so a scrape lands on one of them at random. Each worker therefore
publishes its own exposition every ``interval_s`` into a directory the supervisor made for them
(written atomically: a temporary file renamed over the old one), and the worker that answers a
scrape merges its fresh exposition with its siblings' latest ones, every sample labelled
``worker="<k>"``. A sibling's part is at most ``interval_s`` old; one that stopped publishing
(``stale_after_s``) is left out and ``opamp_fast_worker_up{worker}`` says so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..ticks import sleep_to_tick

__all__ = ["WorkerMetricsShare", "WorkerSlot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process is worker ``slot`` of a supervisor that shares ``directory`` with them."""

    slot: int
    directory: Path


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class WorkerMetricsShare:
    def __init__(
        self,
        slot: WorkerSlot,
        generate: Callable[[], bytes],
        *,
        interval_s: float = 5.0,
        stale_after_s: float = 30.0,
    ) -> None:
        self.slot = slot
        self._generate = generate
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s

    def _path(self, slot: int) -> Path:
        return self.slot.directory / f"worker-{slot}.prom"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.to_thread.run_sync(self.publish)
            await sleep_to_tick(self.interval_s)

    def publish(self) -> None:
        """Write this worker's exposition for its siblings (atomically)."""
        target = self._path(self.slot.slot)
        temporary = target.with_suffix(".tmp")
        temporary.write_bytes(self._generate())
        os.replace(temporary, target)

    def merged(self) -> bytes:
        """All workers' metrics, each sample labelled with its worker; ours is fresh."""
        parts: dict[int, str] = {self.slot.slot: self._generate().decode()}
        now = time.time()
        up: dict[int, bool] = {self.slot.slot: True}
        for path in self.slot.directory.glob("worker-*.prom"):
            slot = int(path.stem.split("-", 1)[1])
            if slot == self.slot.slot:
                continue
            try:
                fresh = now - path.stat().st_mtime <= self.stale_after_s
                text = path.read_text() if fresh else ""
            except OSError:  # being replaced right now, or gone
                fresh, text = False, ""
            up[slot] = fresh
            if fresh:
                parts[slot] = text
        families: dict[str, Metric] = {}
        for slot, text in sorted(parts.items()):
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(slot)}
                    merged.add_sample(sample.name, labels, sample.value, sample.timestamp)
        workers_up = GaugeMetricFamily(
            "opamp_fast_worker_up",
            "1 when the worker's metrics are included (published within stale_after_s).",
            labels=["worker"],
        )
        for slot, fresh in sorted(up.items()):
            workers_up.add_metric([str(slot)], 1.0 if fresh else 0.0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([*families.values(), workers_up]))
        return generate_latest(registry)
