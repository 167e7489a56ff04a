"""OpAMP transports: WebSocket and plain HTTP on one port, both feeding one ``AgentHandler``.

``connection`` is the sans-IO state machine of one connection; ``asyncio_front`` and
``trio_front`` drive it on each backend and hand every other request to the ASGI server.
"""

from .connection import Limits as Limits
from .connection import OpAMPConnection as OpAMPConnection
from .stats import TransportStats as TransportStats

__all__ = ["Limits", "OpAMPConnection", "TransportStats"]
