"""``/metrics`` of all workers from any of them (``--workers``).

The workers share one port, so a scrape lands on one of them at random. Each worker therefore
publishes its own exposition into a directory the supervisor made for them (written
atomically: a temporary file renamed over the old one), and the worker that answers a scrape
merges its fresh exposition with its siblings' latest ones, every sample labelled
``worker="<k>"``. A sibling that stopped publishing (``stale_after_s``) is left out and
``opamp_fast_worker_up{worker}`` says so.

Publishing costs what a scrape costs (tens of milliseconds with per-agent series), so a worker
publishes only while someone scrapes, as one process renders only when scraped: every scrape
touches a marker file in the directory, and each worker publishes every ``interval_s`` while
the marker is younger than ``wanted_for_s`` (and once at start, so that its siblings know it).
A scrape after a quiet spell waits, ``interval_s`` and a little at most, for the siblings to
publish afresh. The per-agent series cap (``metrics_agent_series_max``) holds for the merged
answer: when the workers' per-agent series add up to more than the cap, they are left out as a
whole, as one process leaves them out.
"""

from __future__ import annotations

import functools
import logging
import math
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


#: The marker every scrape touches (its mtime is the last scrape).
SCRAPED = "scraped"
#: The per-agent family and the gauge that says it is left out (``observability.metrics``).
PER_AGENT = "agent_last_seen_seconds"
SUPPRESSED = "opamp_fast_agent_series_suppressed"


class WorkerMetricsShare:
    def __init__(
        self,
        slot: WorkerSlot,
        generate: Callable[[], bytes],
        *,
        interval_s: float = 5.0,
        stale_after_s: float = 30.0,
        wanted_for_s: float = 600.0,
        agent_series_max: int | None = None,
    ) -> None:
        self.slot = slot
        self._generate = generate
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.wanted_for_s = wanted_for_s
        self.agent_series_max = agent_series_max

    def _path(self, slot: int) -> Path:
        return self.slot.directory / f"worker-{slot}.prom"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.to_thread.run_sync(self.publish)
        while True:
            await sleep_to_tick(self.interval_s)
            await anyio.to_thread.run_sync(self.publish_if_wanted)

    def publish(self) -> None:
        """Write this worker's exposition for its siblings (atomically)."""
        target = self._path(self.slot.slot)
        temporary = target.with_suffix(".tmp")
        temporary.write_bytes(self._generate())
        os.replace(temporary, target)

    def publish_if_wanted(self) -> bool:
        """Publish if someone scraped within ``wanted_for_s``; whether it did."""
        wanted = self._scraped_ago() <= self.wanted_for_s
        if wanted:
            self.publish()
        return wanted

    def _scraped_ago(self) -> float:
        try:
            return time.time() - (self.slot.directory / SCRAPED).stat().st_mtime
        except OSError:
            return math.inf

    async def scrape(self) -> bytes:
        """Everyone's metrics for a scrape. After a quiet spell the siblings had stopped
        publishing: wait, ``interval_s`` and a little at most, for them to publish afresh."""
        marker = self.slot.directory / SCRAPED
        quiet = await anyio.to_thread.run_sync(self._scraped_ago) > self.wanted_for_s
        await anyio.to_thread.run_sync(marker.touch)
        if quiet:
            since = (await anyio.to_thread.run_sync(marker.stat)).st_mtime
            with anyio.move_on_after(self.interval_s + min(self.interval_s, 1.0)):
                await self._siblings_publish(since)
        return await anyio.to_thread.run_sync(self.merged)

    async def _siblings_publish(self, since: float) -> None:
        poll_s = min(0.1, self.interval_s / 4)
        published = functools.partial(self._siblings_published, since)
        while not await anyio.to_thread.run_sync(published):  # noqa: ASYNC110 - files of other processes
            await anyio.sleep(poll_s)

    def _siblings_published(self, since: float) -> bool:
        """Every sibling with a file has written it at ``since`` or later."""
        for path in self.slot.directory.glob("worker-*.prom"):
            if path != self._path(self.slot.slot):
                try:
                    if path.stat().st_mtime < since:
                        return False
                except OSError:
                    return False
        return True

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
        self._cap_per_agent_series(families)
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

    def _cap_per_agent_series(self, families: dict[str, Metric]) -> None:
        """More per-agent series than the cap, all workers together: none of them."""
        cap = self.agent_series_max
        per_agent = families.get(PER_AGENT)
        if cap is None or per_agent is None or len(per_agent.samples) <= cap:
            return
        del families[PER_AGENT]
        suppressed = families.get(SUPPRESSED)
        if suppressed is not None:
            suppressed.samples = [sample._replace(value=1.0) for sample in suppressed.samples]
