"""OpAMP transports: WebSocket and plain HTTP on one port, both feeding one ``AgentHandler``.

``connection`` is the sans-IO state machine of one connection (``_exchange``: a request for
the REST application; ``budget``: the bytes held for all of them); ``asyncio_front`` and
``trio_front`` drive it on each backend, and ``asgi`` runs the application for both.
"""

from .connection import Limits as Limits
from .connection import OpAMPConnection as OpAMPConnection
from .stats import TransportStats as TransportStats

__all__ = ["Limits", "OpAMPConnection", "TransportStats"]
