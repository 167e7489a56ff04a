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
The merge works on the text, each sample line given its worker label, not through Prometheus'
parser: parsing 5,000 agents' series and rendering them again cost ~0.12 s of CPU a scrape.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from ..ticks import sleep_to_tick

__all__ = ["WorkerMetricsShare", "WorkerSlot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process is worker ``slot`` of a supervisor that shares ``directory`` with them."""

    slot: int
    directory: Path


#: The marker every scrape touches (its mtime is the last scrape).
SCRAPED = "scraped"
#: The per-agent family and the gauge that says it is left out (``observability.metrics``).
PER_AGENT = "agent_last_seen_seconds"
SUPPRESSED = "opamp_fast_agent_series_suppressed"
_WORKER_UP_HELP = (
    "1 when the worker's metrics are included (it answered this scrape, or published within "
    "stale_after_s)."
)


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

    def _ask(self) -> int:
        """Touch the marker; its new mtime (ns), which every answer must reach."""
        self._marker.touch()
        return self._marker_ns()

    async def scrape(self) -> bytes:
        """Everyone's metrics for a scrape: ask the siblings, wait for their answers
        (``answer_timeout_s`` at most), merge."""
        since = await anyio.to_thread.run_sync(self._ask)
        with anyio.move_on_after(self.answer_timeout_s):
            await self._siblings_answer(since)
        return await anyio.to_thread.run_sync(self.merged)

    async def _siblings_answer(self, since: int) -> None:
        answered = functools.partial(self._siblings_answered, since)
        while not await anyio.to_thread.run_sync(answered):  # noqa: ASYNC110 - files of other processes
            await anyio.sleep(min(0.05, self.poll_s / 2))

    def _siblings_answered(self, since: int) -> bool:
        """Every sibling with a file has written it at ``since`` (ns) or later."""
        for _slot, path in self._siblings():
            try:
                if path.stat().st_mtime_ns < since:
                    return False
            except OSError:
                return False
        return True

    def _siblings(self) -> Iterator[tuple[int, Path]]:
        """Every other worker that has published, with the file it publishes to."""
        for path in self.slot.directory.glob("worker-*.prom"):
            slot = int(path.stem.split("-", 1)[1])
            if slot != self.slot.slot:
                yield slot, path

    def merged(self) -> bytes:
        """All workers' metrics, each sample labelled with its worker; ours is fresh."""
        parts: dict[int, str] = {self.slot.slot: self._generate().decode()}
        now = time.time()
        up: dict[int, bool] = {self.slot.slot: True}
        for slot, path in self._siblings():
            try:
                fresh = now - path.stat().st_mtime <= self.stale_after_s
                text = path.read_text() if fresh else ""
            except OSError:  # being replaced right now, or gone
                fresh, text = False, ""
            up[slot] = fresh
            if fresh:
                parts[slot] = text
        families: dict[str, tuple[list[str], list[str]]] = {}
        for slot, text in sorted(parts.items()):
            label = f'worker="{slot}"'
            for name, header, samples in _families_of(text):
                merged = families.setdefault(name, (header, []))[1]
                merged.extend(_labelled(line, label) for line in samples)
        self._cap_per_agent_series(families)
        lines = [
            f"# HELP opamp_fast_worker_up {_WORKER_UP_HELP}",
            "# TYPE opamp_fast_worker_up gauge",
            *(f'opamp_fast_worker_up{{worker="{slot}"}} {1.0 if fresh else 0.0}'
              for slot, fresh in sorted(up.items())),
        ]  # fmt: skip
        for header, samples in families.values():
            lines += header
            lines += samples
        return ("\n".join(lines) + "\n").encode()

    def _cap_per_agent_series(self, families: dict[str, tuple[list[str], list[str]]]) -> None:
        """More per-agent series than the cap, all workers together: none of them."""
        cap = self.agent_series_max
        per_agent = families.get(PER_AGENT)
        if cap is None or per_agent is None or len(per_agent[1]) <= cap:
            return
        del families[PER_AGENT]
        suppressed = families.get(SUPPRESSED)
        if suppressed is not None:
            suppressed[1][:] = [line.rpartition(" ")[0] + " 1.0" for line in suppressed[1]]


def _families_of(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each family of a text exposition (as ``generate_latest`` writes it: ``# HELP``, then
    ``# TYPE``, then the samples), in order: its name, comment lines and sample lines."""
    name = ""
    header: list[str] = []
    samples: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            if name:
                yield name, header, samples
            name, header, samples = line.split(" ", 3)[2], [line], []
        elif line.startswith("#"):
            header.append(line)
        elif line:
            samples.append(line)
    if name:
        yield name, header, samples


def _labelled(line: str, label: str) -> str:
    """A sample line with ``label`` first in its label set. The name has no ``{`` or space, so
    the first of them ends it; label values may hold either."""
    space = line.index(" ")
    brace = line.find("{", 0, space)
    if brace < 0:
        return f"{line[:space]}{{{label}}}{line[space:]}"
    rest = line[brace + 1 :]
    return f"{line[: brace + 1]}{label}{'' if rest.startswith('}') else ','}{rest}"
