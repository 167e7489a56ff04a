"""Differential test: Cython wheel vs Python twin vs naive oracle (Hypothesis state machine).

All three receive the same random schedule/refresh/cancel/advance sequence and
must report identical expirations (compared sorted; the wheels guarantee no
order) and identical ``len``/``in``/``deadline`` answers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from opamp_fast.native._heartbeat_py import TimingWheel as PyWheel

try:
    from tests.helpers.naive_wheel import NaiveWheel
except ImportError:  # pragma: no cover - depends on how pytest set up sys.path
    from helpers.naive_wheel import NaiveWheel  # type: ignore[no-redef]

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

if NO_EXTENSIONS:
    CWheel: Any = None
else:
    try:
        CWheel = importlib.import_module("opamp_fast.native._heartbeat").TimingWheel
    except ImportError as exc:  # fail loudly below rather than skipping
        CWheel = None
        _IMPORT_ERROR: ImportError | None = exc

# Offsets in ticks, mixing: same tick, level 0, level 1..3 boundaries, ~10^7 ticks
# (days at 1 s), beyond one full hierarchy revolution (2**32, the overflow list).
TICK_OFFSETS = st.one_of(
    st.floats(-5, 300, allow_nan=False),
    st.integers(-3, 600).map(float),
    st.sampled_from([255.0, 256.0, 257.0, 65535.0, 65536.0, 65537.0, 2.0**24, 2.0**24 + 1]),
    st.floats(0, 1e5, allow_nan=False),
    st.floats(0, 1e7, allow_nan=False),
    st.floats(2.0**32 - 1000, 2.0**32 + 1e6, allow_nan=False),
)
ADVANCE_TICKS = st.one_of(
    st.just(0.0),
    st.floats(0, 3, allow_nan=False),
    st.floats(0, 300, allow_nan=False),
    st.floats(0, 7e4, allow_nan=False),
    st.floats(0, 2e7, allow_nan=False),
    st.floats(2.0**32 - 10, 2.0**32 + 2e6, allow_nan=False),
    st.floats(-50, 0, allow_nan=False),  # time going backwards: no-op
)
HANDLES = st.one_of(st.integers(0, 40), st.integers(0, 5000))


class WheelComparison(RuleBasedStateMachine):
    @initialize(
        tick_s=st.sampled_from([1.0, 0.25, 0.1, 3.0, 0.001]),
        start=st.sampled_from([0.0, -17.5, 1e6, 12345.678]),
        capacity=st.sampled_from([0, 8, 64]),
    )
    def setup(self, tick_s: float, start: float, capacity: int) -> None:
        self.tick_s = tick_s
        self.wheels: list[Any] = [
            NaiveWheel(tick_s, capacity, start),
            PyWheel(tick_s, capacity, start),
        ]
        if CWheel is not None:
            self.wheels.append(CWheel(tick_s, capacity, start))
        self.oracle = self.wheels[0]

    def _all(self, method: str, *args: Any) -> list[Any]:
        return [getattr(w, method)(*args) for w in self.wheels]

    @rule(handle=HANDLES, offset=TICK_OFFSETS)
    def schedule(self, handle: int, offset: float) -> None:
        self._all("schedule", handle, self.oracle.now + offset * self.tick_s)

    @precondition(lambda self: len(self.oracle) > 0)
    @rule(data=st.data(), offset=TICK_OFFSETS)
    def refresh(self, data: st.DataObject, offset: float) -> None:
        handle = data.draw(st.sampled_from(sorted(self.oracle.ticks)))
        self._all("schedule", handle, self.oracle.now + offset * self.tick_s)

    @rule(handle=HANDLES)
    def cancel(self, handle: int) -> None:
        results = self._all("cancel", handle)
        assert len(set(results)) == 1, results

    @precondition(lambda self: len(self.oracle) > 0)
    @rule(data=st.data())
    def cancel_scheduled(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.oracle.ticks)))
        assert self._all("cancel", handle) == [True] * len(self.wheels)

    @rule(ticks=ADVANCE_TICKS)
    def advance(self, ticks: float) -> None:
        now = self.oracle.now + ticks * self.tick_s
        results = [sorted(r) for r in self._all("advance", now)]
        expected = results[0]
        assert len(set(expected)) == len(expected)
        for r in results[1:]:
            assert r == expected
        assert len({w.now for w in self.wheels}) == 1

    @rule(handle=HANDLES)
    def query(self, handle: int) -> None:
        assert len({w.deadline(handle) for w in self.wheels}) == 1
        assert len({handle in w for w in self.wheels}) == 1

    @invariant()
    def same_size(self) -> None:
        if hasattr(self, "wheels"):
            assert len({len(w) for w in self.wheels}) == 1


WheelComparison.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_extension_present_for_differential() -> None:
    if not NO_EXTENSIONS and CWheel is None:
        pytest.fail(f"compiled opamp_fast.native._heartbeat is not importable: {_IMPORT_ERROR}")


TestWheelComparison = WheelComparison.TestCase
