"""One budget for the bytes a process holds on behalf of peers.

Each connection may hold a partial request head (16 KiB), a request body or WebSocket message
being received (up to ``--max-message-bytes``), or REST body bytes the application has not
taken yet. Each is bounded in size and time, but not their sum: a dozen anonymous peers each
sending most of a 64 MiB message and then waiting would cost the process most of a gigabyte.
The budget caps the sum. When a connection's holding takes the total over the limit, the
largest holders give way first (a 503 or a WebSocket close 1013, "try again later") until the
total fits again; the many small holders an agent fleet makes are never the largest.

Sans-IO, no clock. Connections report what they hold after every change that matters
(:meth:`BufferBudget.hold`); the steady state of a WebSocket (complete frames) reports nothing.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["BufferBudget", "Holder"]


class Holder(Protocol):
    held: int  # bytes charged to this holder (kept by the budget)

    def shed_buffer(self) -> None:
        """Give the bytes up: refuse what is being received, end the connection."""


class BufferBudget:
    __slots__ = ("_holders", "limit", "shed_bytes", "shed_total", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.shed_total = 0  # holders refused to keep the total within the limit
        self.shed_bytes = 0
        self._holders: dict[Holder, None] = {}

    def hold(self, holder: Holder, nbytes: int) -> None:
        """``holder`` now holds ``nbytes`` (0: nothing). May shed holders, ``holder`` too."""
        before = holder.held
        if nbytes == before:
            return
        holder.held = nbytes
        self.total += nbytes - before
        if nbytes:
            self._holders[holder] = None
        else:
            self._holders.pop(holder, None)
        while self.total > self.limit and self._holders:
            self._shed(max(self._holders, key=_held))

    def release(self, holder: Holder) -> None:
        self.hold(holder, 0)

    def _shed(self, victim: Holder) -> None:
        self.shed_total += 1
        self.shed_bytes += victim.held
        self.release(victim)
        victim.shed_buffer()

    def __len__(self) -> int:
        """Connections holding bytes now."""
        return len(self._holders)


def _held(holder: Holder) -> int:
    return holder.held
