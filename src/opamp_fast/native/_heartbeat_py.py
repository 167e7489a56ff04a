"""Pure-Python twin of :mod:`opamp_fast.native._heartbeat` (same algorithm, lists not C arrays).

Hierarchical timing wheel: ``LEVELS`` levels of ``SLOTS`` slots over integer
ticks, plus a *due* list (ticks at or before the current tick) and an
*overflow* list (ticks more than ``SLOTS ** LEVELS`` ahead).

Placement invariant (``cur`` is the wheel's current tick, ``k > cur`` the
item's tick): the item lives on the level of the highest ``BITS``-bit digit in
which ``k`` and ``cur`` differ, in the slot named by that digit of ``k``.
Advancing from ``cur`` to ``target`` finds the highest digit ``top`` in which
they differ; everything on levels below ``top`` and in level-``top`` slots
strictly between the two digits expires, the level-``top`` slot of
``target``'s digit is re-inserted ("cascaded") relative to ``target``, and all
other items keep a valid position.  So one ``advance`` costs at most
``LEVELS * SLOTS`` slot-head checks plus the expired and cascaded items, no
matter how far time jumps.

Pinned semantics: with ``tick(d) = ceil((d - start) / tick_s)`` (clamped to
``+-2**62``), an item scheduled with deadline ``d`` is reported by the first
``advance(now)`` with ``floor((now - start) / tick_s) >= tick(d)``, i.e.
``now >= ceil_to_tick(d) = start + tick(d) * tick_s``.  The advance target is
clamped to ``2**62 - 1``, so a deadline clamped to ``2**62`` (``inf``) never
expires.  An item whose tick is
at or before the current tick when scheduled is reported by the next
``advance`` call (even one with the same ``now``).  ``advance`` with ``now``
earlier than the previous ``now`` is a no-op returning ``[]``.  Expired handles
become unscheduled; the returned list is in no particular order.
"""

from __future__ import annotations

from math import ceil, floor
from operator import index

__all__ = ["TimingWheel"]

BITS = 8
SLOTS = 1 << BITS
MASK = SLOTS - 1
LEVELS = 4
DUE = LEVELS * SLOTS  # slot id of the "due at the next advance" list
OVERFLOW = DUE + 1  # slot id of the "more than SLOTS**LEVELS ticks ahead" list
NSLOTS = OVERFLOW + 1
MAX_TICK = 1 << 62
MAX_HANDLE = (1 << 31) - 2  # links are int32 in the C version, -1 is NIL
NIL = -1


def _ceil_tick(x: float) -> int:
    if x != x:
        raise ValueError("deadline must not be NaN")
    if x >= MAX_TICK:
        return MAX_TICK
    if x <= -MAX_TICK:
        return -MAX_TICK
    return ceil(x)


def _floor_tick(x: float) -> int:
    if x != x:
        raise ValueError("now must not be NaN")
    if x >= MAX_TICK:
        return MAX_TICK - 1  # a tick clamped to MAX_TICK never expires
    if x <= -MAX_TICK:
        return -MAX_TICK
    return floor(x)


class TimingWheel:
    """Hierarchical timing wheel keyed by dense non-negative int handles.

    ``schedule``/``cancel`` are O(1); ``advance`` is O(expired + cascaded) plus
    at most ``LEVELS * SLOTS`` slot checks, independent of the number of
    scheduled handles and of how far time jumps.  See the module docstring for
    the exact expiry semantics.
    """

    __slots__ = (
        "_cap",
        "_count",
        "_cur",
        "_deadline",
        "_heads",
        "_next",
        "_now",
        "_prev",
        "_slot",
        "_start",
        "_tick",
        "_tick_s",
    )

    def __init__(self, tick_s: float = 1.0, capacity: int = 1024, start: float = 0.0) -> None:
        tick_s = float(tick_s)
        start = float(start)
        capacity = index(capacity)
        if not (tick_s > 0.0 and tick_s < float("inf")):
            raise ValueError("tick_s must be finite and > 0")
        if start != start or start in (float("inf"), float("-inf")):
            raise ValueError("start must be finite")
        if capacity < 0 or capacity > MAX_HANDLE + 1:
            raise ValueError("capacity out of range")
        self._tick_s = tick_s
        self._start = start
        self._now = start
        self._cur = 0
        self._count = 0
        self._cap = capacity
        self._next = [NIL] * capacity
        self._prev = [NIL] * capacity
        self._slot = [NIL] * capacity
        self._tick = [0] * capacity
        self._deadline = [0.0] * capacity
        self._heads = [NIL] * NSLOTS

    # -- internals -------------------------------------------------------

    def _grow(self, handle: int) -> None:
        new_cap = max(handle + 1, 2 * self._cap, 16)
        if new_cap > MAX_HANDLE + 1:
            new_cap = MAX_HANDLE + 1
        extra = new_cap - self._cap
        self._next.extend([NIL] * extra)
        self._prev.extend([NIL] * extra)
        self._slot.extend([NIL] * extra)
        self._tick.extend([0] * extra)
        self._deadline.extend([0.0] * extra)
        self._cap = new_cap

    def _slot_for(self, k: int) -> int:
        cur = self._cur
        if k <= cur:
            return DUE
        x = k ^ cur
        if x >> (BITS * LEVELS):
            return OVERFLOW
        if x >> (3 * BITS):
            return 3 * SLOTS + ((k >> (3 * BITS)) & MASK)
        if x >> (2 * BITS):
            return 2 * SLOTS + ((k >> (2 * BITS)) & MASK)
        if x >> BITS:
            return SLOTS + ((k >> BITS) & MASK)
        return k & MASK

    def _link(self, h: int, s: int) -> None:
        heads = self._heads
        first = heads[s]
        self._next[h] = first
        self._prev[h] = NIL
        if first != NIL:
            self._prev[first] = h
        heads[s] = h
        self._slot[h] = s

    def _unlink(self, h: int, s: int) -> None:
        nxt = self._next[h]
        prv = self._prev[h]
        if prv != NIL:
            self._next[prv] = nxt
        else:
            self._heads[s] = nxt
        if nxt != NIL:
            self._prev[nxt] = prv

    def _drain(self, s: int, out: list[int]) -> None:
        """Expire every item of slot ``s``."""
        heads = self._heads
        nexts = self._next
        slots = self._slot
        h = heads[s]
        heads[s] = NIL
        n = 0
        while h != NIL:
            slots[h] = NIL
            out.append(h)
            n += 1
            h = nexts[h]
        self._count -= n

    def _cascade(self, s: int, out: list[int]) -> None:
        """Re-insert every item of slot ``s`` relative to the current tick."""
        heads = self._heads
        nexts = self._next
        ticks = self._tick
        cur = self._cur
        h = heads[s]
        heads[s] = NIL
        while h != NIL:
            nxt = nexts[h]
            k = ticks[h]
            if k <= cur:
                self._slot[h] = NIL
                out.append(h)
                self._count -= 1
            else:
                self._link(h, self._slot_for(k))
            h = nxt

    # -- public API ------------------------------------------------------

    def schedule(self, handle: int, deadline: float) -> None:
        """Schedule ``handle`` to expire at ``deadline``, replacing any previous deadline.

        Raises ValueError for a negative (or > 2**31 - 2) handle or a NaN deadline.
        Grows the capacity (amortised doubling) when ``handle >= capacity``.
        """
        handle = index(handle)
        deadline = float(deadline)
        if handle < 0 or handle > MAX_HANDLE:
            raise ValueError("handle out of range")
        k = _ceil_tick((deadline - self._start) / self._tick_s)
        if handle >= self._cap:
            self._grow(handle)
        s = self._slot_for(k)
        self._tick[handle] = k
        self._deadline[handle] = deadline
        old = self._slot[handle]
        if old == s:
            return
        if old != NIL:
            self._unlink(handle, old)
        else:
            self._count += 1
        self._link(handle, s)

    def cancel(self, handle: int) -> bool:
        """Unschedule ``handle``; return True if it was scheduled (ValueError if negative)."""
        handle = index(handle)
        if handle < 0:
            raise ValueError("handle must be >= 0")
        if handle >= self._cap:
            return False
        s = self._slot[handle]
        if s == NIL:
            return False
        self._unlink(handle, s)
        self._slot[handle] = NIL
        self._count -= 1
        return True

    def advance(self, now: float) -> list[int]:
        """Move time to ``now`` and return the handles that expired (unordered).

        Expired handles become unscheduled.  ``now`` earlier than the previous
        ``now`` is a no-op returning ``[]``; NaN raises ValueError.
        """
        now = float(now)
        if now != now:
            raise ValueError("now must not be NaN")
        if now < self._now:
            return []
        self._now = now
        target = _floor_tick((now - self._start) / self._tick_s)
        out: list[int] = []
        heads = self._heads
        if heads[DUE] != NIL:
            self._drain(DUE, out)
        cur = self._cur
        if target <= cur:
            return out
        x = cur ^ target
        top = 0
        while top < LEVELS and x >> (BITS * (top + 1)):
            top += 1
        # Everything on the levels below `top` is due.
        for s in range(top * SLOTS):
            if heads[s] != NIL:
                self._drain(s, out)
        self._cur = target
        if top == LEVELS:
            self._cascade(OVERFLOW, out)
            return out
        shift = top * BITS
        base = top * SLOTS
        c = (cur >> shift) & MASK
        t = (target >> shift) & MASK
        for s in range(base + c + 1, base + t):
            if heads[s] != NIL:
                self._drain(s, out)
        if heads[base + t] != NIL:
            self._cascade(base + t, out)
        return out

    def deadline(self, handle: int) -> float | None:
        """Current deadline of ``handle`` or None if unscheduled (ValueError if negative)."""
        handle = index(handle)
        if handle < 0:
            raise ValueError("handle must be >= 0")
        if handle >= self._cap or self._slot[handle] == NIL:
            return None
        return self._deadline[handle]

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object, /) -> bool:
        if not isinstance(key, int):
            return False
        return 0 <= key < self._cap and self._slot[key] != NIL

    @property
    def tick_s(self) -> float:
        return self._tick_s

    @property
    def now(self) -> float:
        return self._now

    @property
    def capacity(self) -> int:
        return self._cap

    def __repr__(self) -> str:
        return (
            f"<TimingWheel tick_s={self._tick_s!r} now={self._now!r} "
            f"scheduled={self._count} capacity={self._cap}>"
        )
