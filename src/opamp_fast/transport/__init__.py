"""OpAMP transports: WebSocket and plain HTTP on one path, both feeding one ``AgentHandler``."""

from .endpoint import OpAMPEndpoint as OpAMPEndpoint

__all__ = ["OpAMPEndpoint"]
