"""Garbage-collector policy for a process that holds tens of thousands of long-lived agents.

A CPython collection walks every tracked object of the generations it collects; a full one over
10k connections' objects paused the loop for up to a second (``docs/performance.md``). Nearly
all of those objects are long-lived (a connection, its agent record and merged state), and
their reference cycles are broken explicitly when a connection ends, so they need no cyclic
collector at all. So:

* after start-up everything alive is frozen (``gc.freeze``: moved to a permanent generation the
  collector never walks);
* while the fleet grows (a ramp, a reconnect storm), a young collection followed by a freeze
  every time ``freeze_step`` more agents are online moves the new connections out of reach too,
  so young collections stay small and old ones find almost nothing to walk;
* young-generation thresholds stay at CPython's defaults: frequent, tiny collections of the
  short-lived per-message objects.

The cost: cyclic garbage that is alive at a freeze is never reclaimed. The connection code breaks
its cycles on close so that none of its objects are in that case.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ..ticks import sleep_to_tick

__all__ = ["GCPauseTimer", "GrowthFreezer", "freeze_after_startup"]

if TYPE_CHECKING:
    from ..fleet.registry import BucketCounts

logger = logging.getLogger(__name__)


def freeze_after_startup() -> None:
    """Collect once, then freeze what start-up left alive (modules, settings, descriptors)."""
    gc.collect()
    gc.freeze()


class GrowthFreezer:
    """Freezes the heap each time the fleet has grown by ``freeze_step`` agents."""

    def __init__(self, online: Callable[[], int], *, freeze_step: int = 1000) -> None:
        self._online = online
        self.freeze_step = freeze_step
        self._frozen_at = 0
        self.freezes = 0

    def check(self) -> bool:
        """Freeze if the fleet grew enough since the last freeze; True when it did."""
        online = self._online()
        if online < self._frozen_at:
            self._frozen_at = online  # shrank: the next growth counts from here
            return False
        if online - self._frozen_at < self.freeze_step:
            return False
        gc.collect(1)  # young garbage first, so it is not frozen with the survivors
        gc.freeze()
        self._frozen_at = online
        self.freezes += 1
        return True

    async def run(
        self, *, interval_s: float = 1.0, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await sleep_to_tick(interval_s)
            if self.check() and logger.isEnabledFor(logging.DEBUG):
                # get_freeze_count walks the whole permanent generation: only when logged
                logger.debug("gc: froze %d objects", gc.get_freeze_count())


class GCPauseTimer:
    """Times every collection into ``pauses`` while it runs (``gc.callbacks``: two calls per
    collection, none otherwise), so a tail in the round trips can be laid against it."""

    def __init__(self, pauses: BucketCounts) -> None:
        self.pauses = pauses
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.observe(time.perf_counter() - self._started)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        gc.callbacks.append(self._callback)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            gc.callbacks.remove(self._callback)
