"""How a flush's encoding shares the interpreter lock with the event loop
(``batch_writer._yielding``), on a fake clock: each row costs 10 us; a release of the lock comes
back at once when the loop is idle and after 5 ms (a switch interval) when it is busy."""

from __future__ import annotations

import itertools

from opamp_fast.storage.batch_writer import _SHARE_MAX_S, _yielding

ROW_S = 10e-6


class Interpreter:
    def __init__(self, release_takes_s: float) -> None:
        self.now = 0.0
        self.release_takes_s = release_takes_s
        self.releases: list[tuple[float, float]] = []  # (released at, back at)

    def clock(self) -> float:
        return self.now

    def release(self) -> None:
        at = self.now
        self.now += self.release_takes_s
        self.releases.append((at, self.now))

    def encode(self, rows: int, every: int) -> None:
        for _ in _yielding(range(rows), every, clock=self.clock, release=self.release):
            self.now += ROW_S


def test_an_idle_loop_gets_the_lock_every_few_rows() -> None:
    idle = Interpreter(release_takes_s=0.0)
    idle.encode(10_000, every=16)
    assert len(idle.releases) == 10_000 // 16  # every 16 rows: 0.16 ms of work between


def test_a_busy_loop_and_the_flush_share_the_lock_evenly() -> None:
    busy = Interpreter(release_takes_s=0.005)
    busy.encode(10_000, every=16)
    releases = busy.releases
    held = [nxt[0] - back for (_, back), nxt in itertools.pairwise(releases)]
    # after waiting 5 ms for the lock, the flush keeps it about as long (whole groups of rows)
    assert all(_SHARE_MAX_S <= h < _SHARE_MAX_S + 16 * ROW_S for h in held), held
    waited = sum(back - at for at, back in releases)
    assert 0.45 < (busy.now - waited) / busy.now < 0.55  # half of the time is the flush's
    # (released every 16 rows it was: 0.16 ms of work in each 5.16 ms)


def test_a_long_wait_buys_no_more_than_the_cap() -> None:
    starved = Interpreter(release_takes_s=0.050)  # a loop that kept the lock for 50 ms
    starved.encode(5_000, every=16)
    releases = starved.releases
    held = [nxt[0] - back for (_, back), nxt in itertools.pairwise(releases)]
    assert max(held) < _SHARE_MAX_S + 16 * ROW_S  # the loop waits at most ~5 ms for it
