"""Heartbeat deadline tracking: a hierarchical timing wheel keyed by int handles.

The compiled ``_heartbeat`` when built, else the twin ``_heartbeat_py`` (``_select.pick``).
Both implement the same algorithm and the same pinned semantics; see
``docs/heartbeat-wheel.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._select import NO_EXTENSIONS, pick

__all__ = ["NO_EXTENSIONS", "USING_EXTENSION", "TimingWheel"]

USING_EXTENSION: bool

if TYPE_CHECKING:
    from ._heartbeat_py import TimingWheel
else:
    _impl, USING_EXTENSION = pick("_heartbeat", "_heartbeat_py", "timing wheel")
    TimingWheel = _impl.TimingWheel
