"""The handler seam between transports and the server's OpAMP logic (opamp-go's callbacks).

A transport calls, per connection and never concurrently for one connection:
``on_connecting`` (accept or reject before any per-connection work: auth, capacity), then
``on_connected``, ``on_message`` for each decoded message, ``on_read_message_error`` for input
that could not be decoded, and ``on_connection_close`` once. For plain HTTP every POST is a
"connection" of its own: the handler, not the transport, tracks an HTTP agent across polls.

Every callback is synchronous and must not block: the transports call them straight from the
event loop's read callback (no task per connection), so a reply is written before the next
read. Work that takes time (database writes) is handed to services through bounded buffers.

``on_heartbeat`` is an optional fast path for the commonest message, a WebSocket heartbeat
``{instance_uid, sequence_num, capabilities}``: the transport recognises it without a full
protobuf decode and offers it first; a handler returns the encoded reply (a ``ServerToAgent``), or
``None`` to decline, in which case the transport decodes the message and calls ``on_message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..protocol import ProtocolError, Session, Transport, pb


@dataclass(frozen=True, slots=True)
class ConnectingRequest:
    transport: Transport
    path: str
    remote_addr: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    tls_peer_cert: dict[str, Any] | None = None  # ssl.SSLSocket.getpeercert() of a TLS client
    # Plain HTTP: the uid of the ``OpAMP-Instance-UID`` request header (16 bytes), if sent.
    instance_uid: bytes | None = None


@dataclass(frozen=True, slots=True)
class ConnectionResponse:
    accept: bool
    http_status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    identity: bytes | None = None  # the instance uid the credentials are bound to, if any

    @classmethod
    def reject(
        cls, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> ConnectionResponse:
        return cls(False, status, headers, reason)


ACCEPT = ConnectionResponse(True)


class Connection(Protocol):
    """What a handler sees of one agent connection (a WebSocket, or one plain-HTTP POST).

    ``record`` belongs to the handler: the agent it serves on this connection. ``identity`` is
    the uid the connection's credentials are bound to (``ConnectionResponse.identity``).
    """

    transport: Transport | None
    remote_addr: str
    identity: bytes | None
    session: Session | None
    record: Any

    @property
    def closed(self) -> bool: ...

    @property
    def can_push(self) -> bool: ...

    def send(self, msg: pb.ServerToAgent) -> bool:
        """Push a message now (WebSocket only). False when it cannot be sent (closed, HTTP)."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the WebSocket close handshake (idempotent). No-op for plain HTTP."""


class AgentHandler(Protocol):
    def on_connecting(self, request: ConnectingRequest) -> ConnectionResponse: ...

    def on_connected(self, conn: Connection) -> None: ...

    def on_message(self, conn: Connection, msg: pb.AgentToServer) -> pb.ServerToAgent | None: ...

    def on_heartbeat(self, conn: Connection, uid: bytes, seq: int, caps: int) -> bytes | None: ...

    def on_read_message_error(self, conn: Connection, error: ProtocolError) -> None: ...

    def on_connection_close(self, conn: Connection) -> None: ...
