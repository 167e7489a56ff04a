"""Naive oracle for the timing wheel: a dict handle -> tick, scanned on every advance.

It restates the pinned semantics directly (no wheel, no cascading):

* ``tick(d) = ceil((d - start) / tick_s)`` clamped to ``[-2**62, 2**62]``;
* ``advance(now)`` computes ``target = floor((now - start) / tick_s)`` (clamped to
  ``2**62 - 1`` so a clamped deadline never expires) and reports every handle
  whose tick is ``<= target``; the current tick never moves backwards, so items
  scheduled at or before the current tick are reported by the next advance;
* ``advance`` with ``now`` earlier than the previous ``now`` is a no-op.
"""

from __future__ import annotations

import math

MAX_TICK = 1 << 62


class NaiveWheel:
    def __init__(self, tick_s: float = 1.0, capacity: int = 1024, start: float = 0.0) -> None:
        self.tick_s = float(tick_s)
        self.start = float(start)
        self.now = self.start
        self.cur = 0
        self.ticks: dict[int, int] = {}
        self.deadlines: dict[int, float] = {}

    def _tick(self, deadline: float) -> int:
        x = (deadline - self.start) / self.tick_s
        if math.isnan(x):
            raise ValueError("deadline must not be NaN")
        return max(-MAX_TICK, min(MAX_TICK, math.ceil(x) if math.isfinite(x) else _inf(x)))

    def schedule(self, handle: int, deadline: float) -> None:
        if handle < 0:
            raise ValueError("handle must be >= 0")
        deadline = float(deadline)
        self.ticks[handle] = self._tick(deadline)
        self.deadlines[handle] = deadline

    def cancel(self, handle: int) -> bool:
        if handle < 0:
            raise ValueError("handle must be >= 0")
        self.deadlines.pop(handle, None)
        return self.ticks.pop(handle, None) is not None

    def advance(self, now: float) -> list[int]:
        now = float(now)
        if math.isnan(now):
            raise ValueError("now must not be NaN")
        if now < self.now:
            return []
        self.now = now
        x = (now - self.start) / self.tick_s
        target = min(MAX_TICK - 1, math.floor(x) if math.isfinite(x) else _inf(x))
        self.cur = max(self.cur, target)
        expired = [h for h, k in self.ticks.items() if k <= self.cur]
        for h in expired:
            del self.ticks[h]
            del self.deadlines[h]
        return expired

    def deadline(self, handle: int) -> float | None:
        return self.deadlines.get(handle)

    def __len__(self) -> int:
        return len(self.ticks)

    def __contains__(self, handle: object) -> bool:
        return handle in self.ticks


def _inf(x: float) -> int:
    return MAX_TICK if x > 0 else -MAX_TICK
