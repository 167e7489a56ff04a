"""Errors raised by the sans-IO protocol core.

Following h11, every protocol error says whose fault it is (``RemoteProtocolError``: the
agent sent something invalid; ``LocalProtocolError``: we were about to send something
invalid) and carries hints the transports translate into a WebSocket close code or an HTTP
status. ``kind`` is a short, stable, machine-readable label suitable as a metric label.
"""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "MessageTooLargeError",
    "OpAMPError",
    "ProtocolError",
    "RemoteProtocolError",
]

#: WebSocket close codes (RFC 6455 section 7.4.1) used as hints.
WS_CLOSE_PROTOCOL_ERROR = 1002
WS_CLOSE_TOO_LARGE = 1009
WS_CLOSE_INTERNAL_ERROR = 1011


class OpAMPError(Exception):
    """Base class of every error raised by ``opamp_fast.protocol``."""


class ProtocolError(OpAMPError):
    """A violation of the OpAMP protocol. Abstract: raise a subclass.

    Attributes:
        kind: short machine label (``"decode"``, ``"bad_header"``, ``"too_large"``,
            ``"bad_instance_uid"``, ``"empty"``, ...), usable as a metric label.
        close_code_hint: the WebSocket close code a transport should use.
        http_status_hint: the HTTP status a plain-HTTP transport should answer with.
    """

    kind: str
    close_code_hint: int
    http_status_hint: int

    def __init__(
        self,
        msg: str,
        *,
        kind: str,
        close_code_hint: int = WS_CLOSE_PROTOCOL_ERROR,
        http_status_hint: int = 400,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a Local/RemoteProtocolError")
        super().__init__(msg)
        self.kind = kind
        self.close_code_hint = close_code_hint
        self.http_status_hint = http_status_hint

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args[0]!r}, kind={self.kind!r})"


class RemoteProtocolError(ProtocolError):
    """The agent (the remote peer) violated the protocol. Defaults: close 1002, HTTP 400."""


class LocalProtocolError(ProtocolError):
    """We were about to violate the protocol (e.g. an outgoing message over the size limit).

    The offending message is never sent. Defaults: close 1011 (internal error), HTTP 500.
    """

    def __init__(
        self,
        msg: str,
        *,
        kind: str,
        close_code_hint: int = WS_CLOSE_INTERNAL_ERROR,
        http_status_hint: int = 500,
    ) -> None:
        super().__init__(
            msg, kind=kind, close_code_hint=close_code_hint, http_status_hint=http_status_hint
        )


class MessageTooLargeError(RemoteProtocolError):
    """An incoming message exceeds ``max_message_bytes``: close 1009, HTTP 413."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit} bytes",
            kind="too_large",
            close_code_hint=WS_CLOSE_TOO_LARGE,
            http_status_hint=413,
        )
        self.size = size
        self.limit = limit
