"""Heartbeat deadline tracking: a hierarchical timing wheel keyed by int handles.

Uses the compiled ``opamp_fast._heartbeat`` extension when available and the
pure-Python twin ``opamp_fast._heartbeat_py`` otherwise (or when the
``OPAMP_FAST_NO_EXTENSIONS`` environment variable is set to a non-empty value).
Both implement the same algorithm and the same pinned semantics; see
``docs/heartbeat-wheel.md``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__all__ = ["NO_EXTENSIONS", "USING_EXTENSION", "TimingWheel"]

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

USING_EXTENSION: bool

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._heartbeat_py import TimingWheel

    USING_EXTENSION = False
else:
    try:
        from ._heartbeat import TimingWheel

        USING_EXTENSION = True
    except ImportError:  # pragma: no cover - depends on the build
        logging.getLogger(__name__).warning(
            "opamp_fast._heartbeat extension not available; using the pure-Python timing wheel"
        )
        from ._heartbeat_py import TimingWheel

        USING_EXTENSION = False
