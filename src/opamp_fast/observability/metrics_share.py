"""``/metrics`` of all workers from any of them (``--workers``).

The workers share one port, so a scrape lands on one of them at random. The worker that answers
asks the others for their figures and merges them with its own, every sample labelled
``worker="<k>"``. They meet in a directory the supervisor made for them:

- the answering worker touches a marker file (``scraped``) and waits, ``answer_timeout_s`` at
  most, until every other worker's part is newer than the marker;
- every worker looks at the marker on its loop's tick grid (``poll_s``, a ``stat`` of a file in
  a local temporary directory, on the tick the loop-lag sampler wakes for anyway) and, when the
  marker is newer than what it last answered, renders its exposition in a thread and writes it
  (atomically: a temporary file renamed over the old one).

So a worker renders once per scrape and never for nobody, as one process renders only when
scraped (a render costs tens of milliseconds with per-agent series). Each also publishes once
at start. A worker whose part is older than ``stale_after_s`` after the wait (dead or stuck) is
left out and ``opamp_fast_worker_up{worker}`` says so. The per-agent series cap
(``metrics_agent_series_max``) holds for the merged answer: when the workers' per-agent series
add up to more than the cap, they are left out as a whole, as one process leaves them out.
"""

from __future__ import annotations

import functools
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
        poll_s: float = 0.25,
        answer_timeout_s: float = 2.0,
        stale_after_s: float = 30.0,
        agent_series_max: int | None = None,
    ) -> None:
        self.slot = slot
        self._generate = generate
        self.poll_s = poll_s
        self.answer_timeout_s = answer_timeout_s
        self.stale_after_s = stale_after_s
        self.agent_series_max = agent_series_max
        self._marker = slot.directory / SCRAPED
        self._answered = 0  # the marker's mtime (ns) this worker last published for

    def _path(self, slot: int) -> Path:
        return self.slot.directory / f"worker-{slot}.prom"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self._answered = self._marker_ns()
        await anyio.to_thread.run_sync(self.publish)
        while True:
            await sleep_to_tick(self.poll_s)
            asked = self._marker_ns()
            if asked > self._answered:
                self._answered = asked
                await anyio.to_thread.run_sync(self.publish)

    def publish(self) -> None:
        """Write this worker's exposition for its siblings (atomically)."""
        target = self._path(self.slot.slot)
        temporary = target.with_suffix(".tmp")
        temporary.write_bytes(self._generate())
        os.replace(temporary, target)

    def _marker_ns(self) -> int:
        try:
            return self._marker.stat().st_mtime_ns
        except OSError:  # nobody scraped yet
            return 0

    async def scrape(self) -> bytes:
        """Everyone's metrics for a scrape: ask the siblings, wait for their answers
        (``answer_timeout_s`` at most), merge."""
        await anyio.to_thread.run_sync(self._marker.touch)
        since = await anyio.to_thread.run_sync(self._marker_ns)
        with anyio.move_on_after(self.answer_timeout_s):
            await self._siblings_answer(since)
        return await anyio.to_thread.run_sync(self.merged)

    async def _siblings_answer(self, since: int) -> None:
        answered = functools.partial(self._siblings_answered, since)
        while not await anyio.to_thread.run_sync(answered):  # noqa: ASYNC110 - files of other processes
            await anyio.sleep(min(0.05, self.poll_s / 2))

    def _siblings_answered(self, since: int) -> bool:
        """Every sibling with a file has written it at ``since`` (ns) or later."""
        for path in self.slot.directory.glob("worker-*.prom"):
            if path != self._path(self.slot.slot):
                try:
                    if path.stat().st_mtime_ns < since:
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
