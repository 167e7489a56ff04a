"""Connection deadlines on one timing wheel: no timer object or task per connection.

Each connection of a driver takes a dense handle; its ``deadline`` (see ``connection.py``) is
scheduled in the shared Cython wheel only when it changes (a phase begins or ends), which in
the steady state of a WebSocket is never. One task per listener advances the wheel every tick
and hands the expired connections back. Deadlines fire at most one tick late, never early.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from ..native.heartbeat import TimingWheel

__all__ = ["ConnectionTimers"]

C = TypeVar("C")


class ConnectionTimers(Generic[C]):
    __slots__ = ("_free", "_items", "_wheel")

    def __init__(self, *, tick_s: float, start: float) -> None:
        self._wheel = TimingWheel(tick_s=tick_s, capacity=1024, start=start)
        self._items: list[C | None] = []
        self._free: list[int] = []

    @property
    def tick_s(self) -> float:
        return self._wheel.tick_s

    def add(self, item: C) -> int:
        """A handle for ``item`` (nothing scheduled yet)."""
        if self._free:
            handle = self._free.pop()
            self._items[handle] = item
        else:
            handle = len(self._items)
            self._items.append(item)
        return handle

    def remove(self, handle: int) -> None:
        """Forget ``handle`` (its deadline with it); it may be reused by the next ``add``."""
        self._wheel.cancel(handle)
        self._items[handle] = None
        self._free.append(handle)

    def set(self, handle: int, deadline: float | None) -> None:
        if deadline is None:
            self._wheel.cancel(handle)
        else:
            self._wheel.schedule(handle, deadline)

    def expire(self, now: float) -> list[C]:
        """Advance to ``now``: the items whose deadline passed, each once."""
        items = self._items
        out = []
        for handle in self._wheel.advance(now):
            item = items[handle]
            if item is not None:
                out.append(item)
        return out

    def __len__(self) -> int:
        """Deadlines currently scheduled."""
        return len(self._wheel)
