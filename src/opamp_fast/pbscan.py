"""Recognise a WebSocket heartbeat straight from its bytes (see ``_pbscan_py``).

Uses the compiled ``opamp_fast._pbscan`` extension when available and the pure-Python twin
``opamp_fast._pbscan_py`` otherwise (or when ``OPAMP_FAST_NO_EXTENSIONS`` is set). Both give the
same answer for every input; ``tests/unit/test_pbscan.py`` checks them against each other and
against protobuf.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__all__ = ["NO_EXTENSIONS", "USING_EXTENSION", "parse_heartbeat"]

NO_EXTENSIONS = bool(os.environ.get("OPAMP_FAST_NO_EXTENSIONS"))

USING_EXTENSION: bool

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._pbscan_py import parse_heartbeat

    USING_EXTENSION = False
else:
    try:
        from ._pbscan import parse_heartbeat

        USING_EXTENSION = True
    except ImportError:  # pragma: no cover - depends on the build
        logging.getLogger(__name__).warning(
            "opamp_fast._pbscan extension not available; using the pure-Python heartbeat scanner"
        )
        from ._pbscan_py import parse_heartbeat

        USING_EXTENSION = False
