# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hierarchical timing wheel over C arrays (see ``_heartbeat_py`` for the twin).

``LEVELS`` levels of ``SLOTS`` slots over int64 ticks, plus a *due* list (ticks
at or before the current tick) and an *overflow* list (more than
``SLOTS ** LEVELS`` ticks ahead).  An item with tick ``k > cur`` lives on the
level of the highest 8-bit digit in which ``k`` and ``cur`` differ, in the slot
named by that digit of ``k``.  Advancing to ``target`` expires everything
below the highest differing digit ``top``, expires the level-``top`` slots
strictly between the digits, and cascades the level-``top`` slot of
``target``'s digit.  One ``advance`` therefore costs at most
``LEVELS * SLOTS`` slot-head checks plus expired and cascaded items.

Pinned semantics: ``tick(d) = ceil((d - start) / tick_s)`` (clamped to
``+-2**62``); an item is reported by the first ``advance(now)`` with
``floor((now - start) / tick_s) >= tick(d)``, i.e. ``now >= start + tick(d) *
tick_s``; the advance target is clamped to ``2**62 - 1`` so ``inf`` never
expires.  An item whose tick is at or before the current tick is reported by
the next ``advance`` call.  ``advance`` with ``now`` earlier than the previous
``now`` is a no-op returning ``[]``.
"""

from cpython.long cimport PyLong_Check
from libc.math cimport ceil, floor, isfinite
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc, realloc


cdef extern from "Python.h":
    # exc=NULL: out-of-range ints are clipped to PY_SSIZE_T_MIN/MAX, not raised.
    Py_ssize_t PyNumber_AsSsize_t(object o, void *exc) except? -1

__all__ = ["TimingWheel"]

cdef enum:
    BITS = 8
    SLOTS = 256  # 1 << BITS
    MASK = 255
    LEVELS = 4
    DUE = 1024  # LEVELS * SLOTS: "due at the next advance" list
    OVERFLOW = 1025  # more than SLOTS ** LEVELS ticks ahead
    NSLOTS = 1026
    NIL = -1

cdef int64_t MAX_TICK = (<int64_t>1) << 62
cdef Py_ssize_t MAX_HANDLE = 2147483646  # (1 << 31) - 2; links are int32, -1 is NIL


cdef inline Py_ssize_t _as_handle(object handle) except? -1:
    # Clips out-of-range ints to PY_SSIZE_T_MIN/MAX instead of raising OverflowError.
    cdef Py_ssize_t h = PyNumber_AsSsize_t(handle, NULL)
    if h < 0:
        raise ValueError("handle must be >= 0")
    return h


cdef inline int64_t _ceil_tick(double x) except? -1:
    if x != x:
        raise ValueError("deadline must not be NaN")
    if x >= <double>MAX_TICK:
        return MAX_TICK
    if x <= -<double>MAX_TICK:
        return -MAX_TICK
    return <int64_t>ceil(x)


cdef inline int64_t _floor_tick(double x) noexcept:
    if x >= <double>MAX_TICK:
        return MAX_TICK - 1  # a tick clamped to MAX_TICK never expires
    if x <= -<double>MAX_TICK:
        return -MAX_TICK
    return <int64_t>floor(x)


cdef class TimingWheel:
    """Hierarchical timing wheel keyed by dense non-negative int handles.

    ``schedule``/``cancel`` are O(1); ``advance`` is O(expired + cascaded) plus
    at most ``LEVELS * SLOTS`` slot checks, independent of the number of
    scheduled handles and of how far time jumps.
    """

    cdef double _tick_s
    cdef double _start
    cdef double _now
    cdef int64_t _cur
    cdef Py_ssize_t _count
    cdef Py_ssize_t _cap
    cdef int32_t *_next
    cdef int32_t *_prev
    cdef int32_t *_slot
    cdef int64_t *_tick
    cdef double *_deadline
    cdef int32_t _heads[NSLOTS]

    def __cinit__(self, tick_s=1.0, capacity=1024, start=0.0):
        self._next = NULL
        self._prev = NULL
        self._slot = NULL
        self._tick = NULL
        self._deadline = NULL
        self._cap = 0

    def __init__(self, double tick_s=1.0, Py_ssize_t capacity=1024, double start=0.0):
        cdef Py_ssize_t i
        if not (tick_s > 0.0 and isfinite(tick_s)):
            raise ValueError("tick_s must be finite and > 0")
        if not isfinite(start):
            raise ValueError("start must be finite")
        if capacity < 0 or capacity > MAX_HANDLE + 1:
            raise ValueError("capacity out of range")
        self._tick_s = tick_s
        self._start = start
        self._now = start
        self._cur = 0
        self._count = 0
        for i in range(NSLOTS):
            self._heads[i] = NIL
        self._resize(capacity)

    def __dealloc__(self):
        free(self._next)
        free(self._prev)
        free(self._slot)
        free(self._tick)
        free(self._deadline)

    # -- internals -------------------------------------------------------

    cdef int _resize(self, Py_ssize_t new_cap) except -1:
        # realloc only: existing entries (and the lists they form) are untouched.
        cdef Py_ssize_t n = new_cap if new_cap > 0 else 1
        cdef Py_ssize_t i
        cdef void *p
        p = realloc(self._next, n * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._next = <int32_t *>p
        p = realloc(self._prev, n * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._prev = <int32_t *>p
        p = realloc(self._slot, n * sizeof(int32_t))
        if p == NULL:
            raise MemoryError()
        self._slot = <int32_t *>p
        p = realloc(self._tick, n * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self._tick = <int64_t *>p
        p = realloc(self._deadline, n * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._deadline = <double *>p
        for i in range(self._cap, new_cap):
            self._slot[i] = NIL
        self._cap = new_cap
        return 0

    cdef int _grow(self, Py_ssize_t handle) except -1:
        cdef Py_ssize_t new_cap = 2 * self._cap
        if new_cap < handle + 1:
            new_cap = handle + 1
        if new_cap < 16:
            new_cap = 16
        if new_cap > MAX_HANDLE + 1:
            new_cap = MAX_HANDLE + 1
        return self._resize(new_cap)

    cdef inline int32_t _slot_for(self, int64_t k) noexcept:
        cdef int64_t cur = self._cur
        cdef int64_t x
        if k <= cur:
            return DUE
        x = k ^ cur
        if x >> (BITS * LEVELS):
            return OVERFLOW
        if x >> (3 * BITS):
            return 3 * SLOTS + <int32_t>((k >> (3 * BITS)) & MASK)
        if x >> (2 * BITS):
            return 2 * SLOTS + <int32_t>((k >> (2 * BITS)) & MASK)
        if x >> BITS:
            return SLOTS + <int32_t>((k >> BITS) & MASK)
        return <int32_t>(k & MASK)

    cdef inline void _link(self, int32_t h, int32_t s) noexcept:
        cdef int32_t first = self._heads[s]
        self._next[h] = first
        self._prev[h] = NIL
        if first != NIL:
            self._prev[first] = h
        self._heads[s] = h
        self._slot[h] = s

    cdef inline void _unlink(self, int32_t h, int32_t s) noexcept:
        cdef int32_t nxt = self._next[h]
        cdef int32_t prv = self._prev[h]
        if prv != NIL:
            self._next[prv] = nxt
        else:
            self._heads[s] = nxt
        if nxt != NIL:
            self._prev[nxt] = prv

    cdef int _drain(self, int32_t s, list out) except -1:
        """Expire every item of slot ``s``."""
        cdef int32_t h = self._heads[s]
        self._heads[s] = NIL
        while h != NIL:
            self._slot[h] = NIL
            out.append(h)
            self._count -= 1
            h = self._next[h]
        return 0

    cdef int _cascade(self, int32_t s, list out) except -1:
        """Re-insert every item of slot ``s`` relative to the current tick."""
        cdef int32_t h = self._heads[s]
        cdef int32_t nxt
        cdef int64_t k
        cdef int64_t cur = self._cur
        self._heads[s] = NIL
        while h != NIL:
            nxt = self._next[h]
            k = self._tick[h]
            if k <= cur:
                self._slot[h] = NIL
                out.append(h)
                self._count -= 1
            else:
                self._link(h, self._slot_for(k))
            h = nxt
        return 0

    # -- public API ------------------------------------------------------

    def schedule(self, object handle, double deadline):
        """Schedule ``handle`` to expire at ``deadline``, replacing any previous deadline.

        Raises ValueError for a negative (or > 2**31 - 2) handle or a NaN deadline.
        Grows the capacity (amortised doubling) when ``handle >= capacity``.
        """
        cdef Py_ssize_t h = _as_handle(handle)
        cdef int64_t k
        cdef int32_t s, old
        if h > MAX_HANDLE:
            raise ValueError("handle out of range")
        k = _ceil_tick((deadline - self._start) / self._tick_s)
        if h >= self._cap:
            self._grow(h)
        s = self._slot_for(k)
        self._tick[h] = k
        self._deadline[h] = deadline
        old = self._slot[h]
        if old == s:
            return
        if old != NIL:
            self._unlink(<int32_t>h, old)
        else:
            self._count += 1
        self._link(<int32_t>h, s)

    def cancel(self, object handle):
        """Unschedule ``handle``; return True if it was scheduled (ValueError if negative)."""
        cdef Py_ssize_t h = _as_handle(handle)
        cdef int32_t s
        if h >= self._cap:
            return False
        s = self._slot[h]
        if s == NIL:
            return False
        self._unlink(<int32_t>h, s)
        self._slot[h] = NIL
        self._count -= 1
        return True

    def advance(self, double now):
        """Move time to ``now`` and return the handles that expired (unordered).

        Expired handles become unscheduled.  ``now`` earlier than the previous
        ``now`` is a no-op returning ``[]``; NaN raises ValueError.
        """
        cdef list out
        cdef int64_t target, cur, x
        cdef int32_t s, base, c, t, top, shift
        if now != now:
            raise ValueError("now must not be NaN")
        if now < self._now:
            return []
        self._now = now
        target = _floor_tick((now - self._start) / self._tick_s)
        out = []
        if self._heads[DUE] != NIL:
            self._drain(DUE, out)
        cur = self._cur
        if target <= cur:
            return out
        x = cur ^ target
        top = 0
        while top < LEVELS and (x >> (BITS * (top + 1))) != 0:
            top += 1
        # Everything on the levels below `top` is due.
        for s in range(top * SLOTS):
            if self._heads[s] != NIL:
                self._drain(s, out)
        self._cur = target
        if top == LEVELS:
            self._cascade(OVERFLOW, out)
            return out
        shift = top * BITS
        base = top * SLOTS
        c = <int32_t>((cur >> shift) & MASK)
        t = <int32_t>((target >> shift) & MASK)
        for s in range(base + c + 1, base + t):
            if self._heads[s] != NIL:
                self._drain(s, out)
        if self._heads[base + t] != NIL:
            self._cascade(base + t, out)
        return out

    def deadline(self, object handle):
        """Current deadline of ``handle`` or None if unscheduled (ValueError if negative)."""
        cdef Py_ssize_t h = _as_handle(handle)
        if h >= self._cap or self._slot[h] == NIL:
            return None
        return self._deadline[h]

    def __len__(self):
        return self._count

    def __contains__(self, object handle):
        cdef Py_ssize_t h
        if not PyLong_Check(handle):
            return False
        h = PyNumber_AsSsize_t(handle, NULL)
        return 0 <= h < self._cap and self._slot[h] != NIL

    @property
    def tick_s(self):
        return self._tick_s

    @property
    def now(self):
        return self._now

    @property
    def capacity(self):
        return self._cap

    def __repr__(self):
        return (
            f"<TimingWheel tick_s={self._tick_s!r} now={self._now!r} "
            f"scheduled={self._count} capacity={self._cap}>"
        )
