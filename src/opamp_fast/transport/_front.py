"""What the asyncio and the trio listener keep alike: their connections, and which of them give
way first when the process runs short of something.

- ``pending``: sockets connected with no request yet, oldest first. When descriptors run out the
  oldest is dropped for a newcomer, so a flood of idle sockets cannot lock out probes,
  operators or agents.
- ``upgrading``: WebSockets upgraded and waiting for their first message, oldest first, with
  the time of the upgrade. When every handshake slot is taken, one silent for more than
  ``SILENT_UPGRADE_GRACE_S`` is dropped for a newcomer (real agents send their first message at
  once; a peer that upgrades and waits only holds a slot).

Each driver's connection knows how to ``drop()`` itself at once (abort the socket, forget it).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel

from .asgi import not_found
from .connection import SILENT_UPGRADE_GRACE_S, Limits

__all__ = ["FrontBase"]


class _Droppable(Protocol):
    def close(self, code: int = 1000, reason: str = "", now: float | None = None) -> None: ...

    def drop(self) -> None: ...


C = TypeVar("C", bound=_Droppable)


class FrontBase(Generic[C]):
    def __init__(
        self,
        limits: Limits,
        app: Any,
        *,
        tls: ssl.SSLContext | None,
        max_sockets: int,
        clock: Callable[[], float],
    ) -> None:
        self.limits = limits
        self.app = app if app is not None else not_found
        limits.scheme = "https" if tls is not None else "http"
        self.tls = tls
        self.max_sockets = max_sockets
        self.clock = clock
        self.connections: set[C] = set()
        self.pending: dict[C, None] = {}
        self.upgrading: dict[C, float] = {}

    def sockets_open(self) -> int:
        return len(self.connections)

    def evict_pending(self) -> bool:
        """Drop the oldest connection that has not sent a request yet; False if none."""
        if not self.pending:
            return False
        oldest = next(iter(self.pending))
        self.pending.pop(oldest)
        self.limits.stats.tcp_evicted += 1
        oldest.drop()
        return True

    def evict_silent_upgrade(self) -> bool:
        """Drop the oldest WebSocket upgraded at least ``SILENT_UPGRADE_GRACE_S`` ago that has
        not completed its first message; False if there is none."""
        if not self.upgrading:
            return False
        oldest, since = next(iter(self.upgrading.items()))
        if self.clock() - since < SILENT_UPGRADE_GRACE_S:
            return False
        self.upgrading.pop(oldest)
        self.limits.stats.upgrades_evicted += 1
        oldest.drop()
        return True

    def stop_accepting(self) -> None:
        raise NotImplementedError

    async def drain(self, timeout_s: float) -> int:
        """Close every connection (1001 for WebSockets, idle HTTP at once, REST once its
        response is out), wait for them within ``timeout_s``, then drop the rest. Returns how
        many had to be dropped."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close(1001, "server shutting down")
        with anyio.move_on_after(timeout_s):
            while self.connections:  # noqa: ASYNC110 - connections signal nothing when they end
                await anyio.sleep(0.05)
        dropped = len(self.connections)
        for conn in list(self.connections):
            conn.drop()
        await anyio.lowlevel.checkpoint()  # let the aborts be delivered
        return dropped
