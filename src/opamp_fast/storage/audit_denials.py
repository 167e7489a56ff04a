"""Refused requests in the audit log, without letting a caller grow it without limit.

A refusal (403) is worth recording: someone tried what their role does not allow. But a viewer
repeating one refused write a thousand times a second would otherwise append a thousand rows a
second (each a transaction on the database every instance shares), and the rows that matter
would drown. So refusals are counted in memory per principal (subject and role), action and
window (``audit_denial_window_s``, a minute by default):

* the first refusal of a window is written at once, ``after.count`` 1: the log shows it
  immediately, and a crash cannot lose it;
* the repeats in that window are counted and written as one more row when the window ends
  (``after.count``: how many; ``after.targets``: the distinct targets, at most
  :data:`MAX_TARGETS`; ``after.first_at`` / ``after.last_at``).

So at most two rows per principal, action and window, whatever the rate. Nothing is ever
updated: the table stays append-only. Each instance counts its own refusals. The window in
progress is written at shutdown; a crash loses at most its repeat count. The answer to every
refused request is still its own 403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import psycopg
from anyio.abc import TaskStatus
from psycopg_pool import PoolTimeout

from . import Database
from .config_queries import AuditEntry, append_audit

__all__ = ["DenialLog"]

logger = logging.getLogger(__name__)

MAX_TARGETS = 10  # distinct targets listed in a window's row
MAX_OPEN_WINDOWS = 10_000  # beyond this many, every window is closed early
MAX_PENDING = 10_000  # rows kept for a retry while the database is unreachable

Key = tuple[str, str, str]  # (actor, role, action)


@dataclass(slots=True)
class _Window:
    start: float
    repeats: int = 0
    targets: list[str] = field(default_factory=list)
    first_at: float = 0.0
    last_at: float = 0.0
    last: AuditEntry | None = None

    def add(self, entry: AuditEntry, now: float) -> None:
        if not self.repeats:
            self.first_at = now
        self.repeats += 1
        self.last_at = now
        self.last = entry
        if entry.target not in self.targets and len(self.targets) < MAX_TARGETS:
            self.targets.append(entry.target)

    def summary(self) -> AuditEntry:
        """The row of this window's repeats (call only when there were some)."""
        assert self.last is not None
        after = {
            **(self.last.after or {}),
            "count": self.repeats,
            "targets": self.targets,
            "first_at": _rfc3339(self.first_at),
            "last_at": _rfc3339(self.last_at),
        }
        return replace(self.last, target=self.targets[0], after=after)


class DenialLog:
    """Writes refusals to the audit log, aggregated as the module docstring says."""

    def __init__(
        self, db: Database, *, window_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self.window_s = window_s
        self._clock = clock
        self._open: dict[Key, _Window] = {}
        self._pending: list[AuditEntry] = []

    async def record(self, entry: AuditEntry) -> None:
        """One refusal: a row now when it opens a window, else only counted."""
        now = self._clock()
        start = now - now % self.window_s
        key = (entry.actor, entry.role, entry.action)
        window = self._open.get(key)
        if window is not None and window.start == start:
            window.add(entry, now)
            return
        full = len(self._open) >= MAX_OPEN_WINDOWS
        self._close(lambda w: full or w.start < start)
        self._open[key] = _Window(start)  # before the write: concurrent repeats count
        first = replace(entry, after={**(entry.after or {}), "count": 1})
        await self._write([first])

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write each window's repeats when it closes; the open ones at shutdown."""
        task_status.started()
        try:
            while True:
                now = self._clock()
                await anyio.sleep(self.window_s - now % self.window_s + 0.01)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush(everything=True)

    async def flush(self, *, everything: bool = False) -> None:
        """Close the windows that ended (all of them with ``everything``) and write their rows,
        with any left from a failed write."""
        now = self._clock()
        start = now - now % self.window_s
        self._close(lambda w: everything or w.start < start)
        if self._pending:
            rows, self._pending = self._pending, []
            await self._write(rows)

    def _close(self, ended: Callable[[_Window], bool]) -> None:
        for key, window in list(self._open.items()):
            if ended(window):
                del self._open[key]
                if window.repeats:
                    self._pending.append(window.summary())

    async def _write(self, rows: list[AuditEntry]) -> None:
        def append(conn: Any) -> None:
            for row in rows:
                append_audit(conn, row)

        try:
            await self._db.run(append)
        except (psycopg.OperationalError, PoolTimeout):
            logger.warning("database unavailable: %d audit row(s) of refusals kept", len(rows))
            self._pending = (rows + self._pending)[:MAX_PENDING]


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
