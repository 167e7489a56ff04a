"""Choosing a compiled module or its pure-Python twin: one rule for all three (yarl's dispatcher).

The compiled module is used when it is built and ``OPAMP_FAST_NO_EXTENSIONS`` is unset or
empty; otherwise the twin, with one warning when the build is missing (a wheel without
extensions is a working but slower server). Type checkers always see the twin.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

__all__ = ["NO_EXTENSIONS", "pick"]

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

logger = logging.getLogger(__name__)


def pick(compiled: str, twin: str, what: str) -> tuple[ModuleType, bool]:
    """``(module, is_compiled)`` for ``opamp_fast.native.<compiled>`` or its ``<twin>``."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"{__package__}.{compiled}"), True
        except ImportError:  # pragma: no cover - depends on the build
            logger.warning(
                "%s.%s is not built; using the pure-Python %s", __package__, compiled, what
            )
    return importlib.import_module(f"{__package__}.{twin}"), False
