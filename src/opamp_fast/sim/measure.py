"""What a run measures: round-trip latencies (fixed-memory histograms), the counters every agent
task bumps, the server's RSS and CPU (with ``--server-pid``) and the simulator's own CPU."""

from __future__ import annotations

import math
import resource
import time
from collections import Counter
from typing import Any, Final

from .config import SimulatorError


class LatencyHistogram:
    """Counts in log-spaced buckets 2 % wide from 1 us to about an hour.

    Memory is fixed (~1,100 ints) however many samples arrive, so 100k agents for an hour cost the
    same as ten; a percentile is the upper edge of its bucket (at most 2 % high), capped by the
    exact maximum.
    """

    __slots__ = ("count", "counts", "max_s", "total_s")

    MIN_S: Final = 1e-6
    GROWTH: Final = 1.02
    _INV_LOG: Final = 1.0 / math.log(1.02)
    BUCKETS: Final = int(math.log(3600.0 / 1e-6) / math.log(1.02)) + 2

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        if seconds <= self.MIN_S:
            index = 0
        else:
            index = min(int(math.log(seconds / self.MIN_S) * self._INV_LOG) + 1, self.BUCKETS - 1)
        self.counts[index] += 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: LatencyHistogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds; 0.0 without samples."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.MIN_S * self.GROWTH**i, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int]:
        def ms(s: float) -> float:
            return round(s * 1000.0, 3)

        return {
            "count": self.count,
            "mean": ms(self.total_s / self.count) if self.count else 0.0,
            "p50": ms(self.percentile(50)),
            "p95": ms(self.percentile(95)),
            "p99": ms(self.percentile(99)),
            "max": ms(self.max_s),
        }


class Stats:
    """Counters shared by all agent tasks (one trio thread: plain ints, no locks)."""

    def __init__(self) -> None:
        self.connected = 0
        self.connected_max = 0
        self.started = 0
        self.sessions_opened = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.heartbeats_sent = 0
        self.goodbyes_sent = 0
        self.config_reports_sent = 0
        self.full_states_sent = 0
        self.full_state_requests = 0
        self.remote_configs_applied = 0
        self.uid_reassignments = 0
        self.reconnects = 0
        self.storm_dropped = 0
        self.churned = 0
        self.errors: Counter[str] = Counter()
        self.latency = LatencyHistogram()  # whole run
        self.window = LatencyHistogram()  # since the last progress line
        self.steady = LatencyHistogram()  # after the whole fleet connected
        self.steady_on = False

    def rtt(self, seconds: float) -> None:
        self.latency.record(seconds)
        self.window.record(seconds)
        if self.steady_on:
            self.steady.record(seconds)

    def online(self) -> None:
        self.connected += 1
        self.sessions_opened += 1
        if self.connected > self.connected_max:
            self.connected_max = self.connected

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


class ProcessSampler:
    """RSS and CPU of a process (the server) via psutil; absent when no pid is given."""

    def __init__(self, pid: int) -> None:
        try:
            import psutil  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise SimulatorError(
                "--server-pid needs psutil: pip install -e '.[loadtest]'"
            ) from None
        try:
            self._proc: Any = psutil.Process(pid)
            self._cpu0 = self.cpu_seconds()
        except psutil.Error as exc:
            raise SimulatorError(f"--server-pid {pid}: {exc}") from None
        self.error = psutil.Error  # callers that read the process directly catch it too
        self.pid = pid
        self.rss_start = self.rss()
        self.rss_max = self.rss_start
        self._last_t = time.monotonic()
        self._last_cpu = self._cpu0

    def cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def sample(self) -> tuple[int, float] | None:
        """(rss bytes, CPU % of one core since the last sample), or None once it is gone."""
        try:
            rss, cpu = self.rss(), self.cpu_seconds()
        except self.error:
            return None
        now = time.monotonic()
        percent = 100.0 * (cpu - self._last_cpu) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_cpu = now, cpu
        self.rss_max = max(self.rss_max, rss)
        return rss, percent


def own_cpu_seconds() -> float:
    """CPU time of this process (user + system): the simulator's own cost in the summary."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
