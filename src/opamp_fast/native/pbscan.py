"""Recognise a WebSocket heartbeat straight from its bytes (see ``_pbscan_py``).

The compiled ``_pbscan`` when built, else the twin ``_pbscan_py`` (``_select.pick``). Both
give the same answer for every input; ``tests/unit/test_pbscan.py`` checks them against each
other and against protobuf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._select import NO_EXTENSIONS, pick

__all__ = ["NO_EXTENSIONS", "USING_EXTENSION", "parse_heartbeat"]

USING_EXTENSION: bool

if TYPE_CHECKING:
    from ._pbscan_py import parse_heartbeat
else:
    _impl, USING_EXTENSION = pick("_pbscan", "_pbscan_py", "heartbeat scanner")
    parse_heartbeat = _impl.parse_heartbeat
