"""Unit tests for the heartbeat timing wheel, run against both implementations."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import time
from types import ModuleType

import pytest

from opamp_fast.native import _heartbeat_py, heartbeat

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))


def _load_extension() -> ModuleType:
    try:
        return importlib.import_module("opamp_fast.native._heartbeat")
    except ImportError as exc:  # must fail, not skip: a missing build is a bug
        pytest.fail(f"compiled opamp_fast.native._heartbeat is not importable: {exc}")


@pytest.fixture(params=["C", "Py"])
def wheel_cls(request: pytest.FixtureRequest) -> type:
    if request.param == "Py":
        return _heartbeat_py.TimingWheel
    if NO_EXTENSIONS:
        pytest.skip("OPAMP_FAST_NO_EXTENSIONS is set")
    return _load_extension().TimingWheel


def test_extension_loaded() -> None:
    if NO_EXTENSIONS:
        assert heartbeat.USING_EXTENSION is False
        assert heartbeat.TimingWheel is _heartbeat_py.TimingWheel
        return
    ext = _load_extension()
    assert heartbeat.USING_EXTENSION is True
    assert heartbeat.TimingWheel is ext.TimingWheel
    assert ext.__file__ is not None
    assert not ext.__file__.endswith(".py")


def _run_isolated(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=60
    )


def test_fallback_with_env_var() -> None:
    code = (
        "import opamp_fast.native.heartbeat as h\n"
        "assert h.NO_EXTENSIONS is True\n"
        "assert h.USING_EXTENSION is False\n"
        "assert h.TimingWheel.__module__ == 'opamp_fast.native._heartbeat_py'\n"
        "w = h.TimingWheel(); w.schedule(3, 1.0); assert w.advance(1.0) == [3]\n"
    )
    proc = _run_isolated(code, OPAMP_FAST_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr


def test_fallback_when_extension_missing() -> None:
    code = (
        "import sys, logging\n"
        "logging.basicConfig()\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'opamp_fast.native._heartbeat':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import opamp_fast.native.heartbeat as h\n"
        "assert h.USING_EXTENSION is False\n"
        "assert h.TimingWheel.__module__ == 'opamp_fast.native._heartbeat_py'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPAMP_FAST_NO_EXTENSIONS"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pure-Python timing wheel" in proc.stderr


# -- pinned semantics ----------------------------------------------------------


def test_expires_at_ceil_to_tick(wheel_cls: type) -> None:
    w = wheel_cls()
    w.schedule(1, 5.0)
    w.schedule(2, 4.2)  # ceil_to_tick(4.2) == 5.0
    w.schedule(3, 5.000001)  # -> 6.0
    assert w.advance(4.999) == []
    assert sorted(w.advance(5.0)) == [1, 2]
    assert w.advance(5.9) == []
    assert w.advance(6.0) == [3]
    assert len(w) == 0


def test_start_and_fractional_tick(wheel_cls: type) -> None:
    w = wheel_cls(tick_s=0.5, start=100.0)
    assert w.now == 100.0
    assert w.tick_s == 0.5
    w.schedule(7, 100.6)  # tick ceil(1.2) = 2 -> 101.0
    assert w.advance(100.9) == []
    assert w.advance(101.0) == [7]
    assert w.now == 101.0


def test_negative_start(wheel_cls: type) -> None:
    w = wheel_cls(tick_s=2.0, start=-10.0)
    w.schedule(0, -7.0)  # tick ceil(1.5) = 2 -> -6.0
    assert w.advance(-6.5) == []
    assert w.advance(-6.0) == [0]


def test_past_deadline_reported_by_next_advance_even_same_now(wheel_cls: type) -> None:
    w = wheel_cls()
    assert w.advance(10.0) == []
    w.schedule(1, 3.0)  # in the past
    w.schedule(2, 10.0)  # exactly the current tick
    w.schedule(3, 10.5)  # next tick
    assert sorted(w.advance(10.0)) == [1, 2]
    assert w.advance(10.9) == []
    assert w.advance(11.0) == [3]


def test_deadline_before_start(wheel_cls: type) -> None:
    w = wheel_cls(start=50.0)
    w.schedule(4, -1e9)
    w.schedule(5, float("-inf"))
    assert sorted(w.advance(50.0)) == [4, 5]


def test_advance_backwards_is_noop(wheel_cls: type) -> None:
    w = wheel_cls()
    w.advance(10.0)
    w.schedule(1, 0.0)  # due
    assert w.advance(5.0) == []
    assert w.now == 10.0
    assert 1 in w
    assert w.advance(10.0) == [1]


def test_advance_before_start_is_noop(wheel_cls: type) -> None:
    w = wheel_cls(start=5.0)
    w.schedule(1, 1.0)
    assert w.advance(4.0) == []
    assert w.now == 5.0
    assert w.advance(5.0) == [1]


def test_refresh_replaces_deadline(wheel_cls: type) -> None:
    w = wheel_cls()
    w.schedule(1, 5.0)
    w.schedule(1, 50.0)
    assert len(w) == 1
    assert w.deadline(1) == 50.0
    assert w.advance(10.0) == []
    w.schedule(1, 12.0)  # earlier again
    assert w.advance(12.0) == [1]
    assert w.deadline(1) is None


def test_refresh_many_same_slot_and_relink(wheel_cls: type) -> None:
    w = wheel_cls()
    for h in range(100):
        w.schedule(h, 20.0)
    for h in range(0, 100, 2):
        w.schedule(h, 19.5)  # same tick -> same slot, deadline updated
    for h in range(1, 100, 4):
        w.schedule(h, 1000.0)  # different level
    assert w.deadline(0) == 19.5
    expired = w.advance(20.0)
    assert sorted(expired) == sorted(h for h in range(100) if h % 4 != 1)
    assert sorted(w.advance(1000.0)) == list(range(1, 100, 4))


def test_cancel(wheel_cls: type) -> None:
    w = wheel_cls(capacity=8)
    w.schedule(3, 5.0)
    w.schedule(4, 5.0)
    w.schedule(5, 5.0)
    assert w.cancel(4) is True
    assert w.cancel(4) is False
    assert w.cancel(6) is False
    assert w.cancel(1_000_000) is False  # beyond capacity
    assert w.cancel(2**80) is False
    assert w.capacity == 8
    assert len(w) == 2
    assert sorted(w.advance(5.0)) == [3, 5]
    assert w.cancel(3) is False


def test_cancel_due_and_overflow(wheel_cls: type) -> None:
    w = wheel_cls()
    w.advance(10.0)
    w.schedule(1, 0.0)  # due list
    w.schedule(2, 2.0**40)  # overflow list
    assert w.cancel(1)
    assert w.cancel(2)
    assert w.advance(2.0**41) == []


def test_contains_len_deadline(wheel_cls: type) -> None:
    w = wheel_cls()
    assert len(w) == 0
    assert 0 not in w
    w.schedule(0, 1.5)
    assert 0 in w
    assert -1 not in w
    assert 10**30 not in w
    assert "0" not in w
    assert w.deadline(0) == 1.5
    assert w.deadline(1) is None
    assert w.deadline(10**30) is None
    assert len(w) == 1
    w.schedule(1, 7)  # ints accepted
    assert w.deadline(1) == 7.0


def test_invalid_arguments(wheel_cls: type) -> None:
    w = wheel_cls()
    with pytest.raises(ValueError):
        w.schedule(-1, 1.0)
    with pytest.raises(ValueError):
        w.schedule(-(2**80), 1.0)
    with pytest.raises(ValueError):
        w.schedule(2**31 - 1, 1.0)  # beyond int32 links
    with pytest.raises(ValueError):
        w.schedule(2**80, 1.0)
    with pytest.raises(ValueError):
        w.schedule(1, math.nan)
    with pytest.raises(ValueError):
        w.cancel(-1)
    with pytest.raises(ValueError):
        w.deadline(-1)
    with pytest.raises(ValueError):
        w.advance(math.nan)
    with pytest.raises(TypeError):
        w.schedule(1.0, 1.0)
    assert len(w) == 0
    assert w.capacity == 1024


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tick_s": 0.0},
        {"tick_s": -1.0},
        {"tick_s": math.nan},
        {"tick_s": math.inf},
        {"capacity": -1},
        {"start": math.nan},
        {"start": math.inf},
    ],
)
def test_invalid_constructor(wheel_cls: type, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        wheel_cls(**kwargs)


def test_growth_preserves_schedule(wheel_cls: type) -> None:
    w = wheel_cls(capacity=4)
    assert w.capacity == 4
    for h in range(4):
        w.schedule(h, 10.0 + h)
    w.schedule(100, 5.0)
    assert w.capacity >= 101
    cap = w.capacity
    w.schedule(cap, 3.0)  # amortised doubling
    assert w.capacity >= 2 * cap
    assert len(w) == 6
    assert w.deadline(2) == 12.0
    assert sorted(w.advance(5.0)) == [100, cap]
    assert sorted(w.advance(13.0)) == [0, 1, 2, 3]


def test_zero_capacity(wheel_cls: type) -> None:
    w = wheel_cls(capacity=0)
    assert w.capacity == 0
    assert w.cancel(0) is False
    w.schedule(0, 1.0)
    assert w.capacity >= 1
    assert w.advance(1.0) == [0]


@pytest.mark.parametrize("ahead", [255, 256, 257, 65535, 65536, 10**7, 2**24 + 3, 2**32 + 5])
def test_far_deadlines_exact_tick(wheel_cls: type, ahead: int) -> None:
    w = wheel_cls()
    w.advance(123.0)
    w.schedule(9, 123.0 + ahead)
    # Walk with a few irregular jumps, never reaching the deadline early.
    now = 123.0
    for frac in (0.1, 0.5, 0.9, 0.999):
        now = max(now, 123.0 + math.floor(ahead * frac) - 1)
        assert w.advance(now) == []
    assert w.advance(123.0 + ahead - 1) == []
    assert 9 in w
    assert w.advance(123.0 + ahead) == [9]


def test_tick_by_tick_across_boundaries(wheel_cls: type) -> None:
    w = wheel_cls()
    deadlines = {h: float(1 + h * 37 % 70_000) for h in range(2000)}
    for h, d in deadlines.items():
        w.schedule(h, d)
    seen: dict[int, float] = {}
    for t in range(1, 70_001):
        for h in w.advance(float(t)):
            seen[h] = float(t)
    assert seen == deadlines


def test_huge_jump_is_bounded(wheel_cls: type) -> None:
    w = wheel_cls(tick_s=0.001)
    for h in range(1000):
        w.schedule(h, 10.0 ** (h % 15))
    t0 = time.perf_counter()
    expired = w.advance(1e12)  # ~1e15 ticks
    assert time.perf_counter() - t0 < 0.5
    assert sorted(expired) == [h for h in range(1000) if 10.0 ** (h % 15) <= 1e12]
    t0 = time.perf_counter()
    for i in range(1, 200):
        w.advance(1e12 * i)
    assert time.perf_counter() - t0 < 2.0
    assert len(w) == 0


def test_infinite_deadline_never_expires(wheel_cls: type) -> None:
    w = wheel_cls()
    w.schedule(1, math.inf)
    w.schedule(2, 1e300)
    w.schedule(3, 2.0**70)
    assert w.advance(2.0**61) == []
    assert w.advance(math.inf) == []
    assert len(w) == 3
    assert w.deadline(1) == math.inf


def test_expired_become_unscheduled_and_can_be_rescheduled(wheel_cls: type) -> None:
    w = wheel_cls()
    for h in range(10):
        w.schedule(h, 1.0)
    for h in w.advance(1.0):
        assert h not in w
        w.schedule(h, 2.0)  # rescheduling while iterating the result is fine
    assert len(w) == 10
    assert sorted(w.advance(2.0)) == list(range(10))


def test_no_python_object_per_handle(wheel_cls: type) -> None:
    # Expired results are plain ints, no duplicates.
    w = wheel_cls()
    for h in range(5000):
        w.schedule(h, float(h % 3))
    out = w.advance(2.0)
    assert sorted(out) == list(range(5000))
    assert all(type(h) is int for h in out)
