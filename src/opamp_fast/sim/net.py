"""What ends a session (the exceptions an agent's reconnect loop tells apart), and the socket
handling both transports share: connect, abort, naming a failure for the error counters."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import trio

from .config import Target

#: One receive takes what a server reply can be in practice; larger ones arrive in pieces.
RECV_BYTES: Final = 65536


class Closed(Exception):
    """This connection is over; ``kind`` is the error counter to bump ("" for none)."""

    def __init__(self, kind: str, retry_after_s: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


class Storm(Exception):
    """The storm instant: drop the connection without a goodbye, reconnect at once."""


class End(Exception):
    """The run is over (graceful goodbye already attempted)."""


NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@asynccontextmanager
async def connection(
    target: Target,
    timeout_s: float,
    local_address: str | None,
    *,
    kind: str,
    timeout_kind: str,
    protocol_errors: tuple[type[Exception], ...],
) -> AsyncIterator[trio.SocketStream]:
    """One session's TCP connection, aborted when the session ends however it ends. A failure
    inside becomes :class:`Closed`, counted under the transport's ``kind``: a ``trio`` timeout
    as ``timeout_kind``, a socket error by its errno, one of ``protocol_errors`` as a protocol
    error."""
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(
                target.host, target.port, local_address=local_address
            )
    except trio.TooSlowError:
        raise Closed("connect_timeout") from None
    except OSError as exc:
        raise Closed(os_error_kind("connect", exc)) from None
    try:
        yield stream
    except trio.TooSlowError:
        raise Closed(timeout_kind) from None
    except NETWORK_ERRORS as exc:
        raise Closed(os_error_kind(kind, exc)) from None
    except protocol_errors:
        raise Closed(f"{kind}_protocol_error") from None
    finally:
        await abort(stream)


async def abort(stream: trio.SocketStream) -> None:
    """Close the socket now, whatever state it is in (never blocks, never raises)."""
    with trio.CancelScope(shield=True):
        try:
            await trio.aclose_forcefully(stream)
        except NETWORK_ERRORS:
            pass


def os_error_kind(prefix: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{prefix}_{errno.errorcode.get(exc.errno, str(exc.errno)).lower()}"
    return f"{prefix}_{type(exc).__name__.lower()}"


def retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                return float(value.decode("ascii"))
            except ValueError:
                return None
    return None
