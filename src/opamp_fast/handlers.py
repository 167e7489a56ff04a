"""The handler seam between transports and the server's OpAMP logic (opamp-go's callbacks).

A transport calls, per connection and never concurrently for one connection:
``on_connecting`` (accept or reject before any per-connection work: auth, capacity), then
``on_connected``, ``on_message`` for each decoded message, ``on_read_message_error`` for input
that could not be decoded, and ``on_connection_close`` once. For plain HTTP every POST is a
"connection" of its own: the handler, not the transport, tracks an HTTP agent across polls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .protocol import ProtocolError, Transport, pb
    from .transport.connection import Connection


@dataclass(frozen=True, slots=True)
class ConnectingRequest:
    transport: Transport
    path: str
    remote_addr: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "


@dataclass(frozen=True, slots=True)
class ConnectionResponse:
    accept: bool
    http_status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    @classmethod
    def reject(
        cls, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> ConnectionResponse:
        return cls(False, status, headers, reason)


ACCEPT = ConnectionResponse(True)


class AgentHandler(Protocol):
    def on_connecting(self, request: ConnectingRequest) -> ConnectionResponse: ...

    async def on_connected(self, conn: Connection) -> None: ...

    async def on_message(
        self, conn: Connection, msg: pb.AgentToServer
    ) -> pb.ServerToAgent | None: ...

    def on_read_message_error(self, conn: Connection, error: ProtocolError) -> None: ...

    async def on_connection_close(self, conn: Connection) -> None: ...
