"""A TCP proxy on loopback that can delay what the server sends: a slow network, for real.

``open_delay_proxy(port, delays=[1.5])`` forwards every connection to ``127.0.0.1:port``; the
first server-to-client chunks wait ``delays`` seconds each (one per chunk, in order, across
connections). Used to make a reply outlive a client's timeout without touching the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc

__all__ = ["open_delay_proxy"]


async def _pump(
    source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, delays: list[float] | None
) -> None:
    try:
        while True:
            data = await source.receive(65536)
            if delays:
                await anyio.sleep(delays.pop(0))
            await sink.send(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await sink.aclose()


@contextlib.asynccontextmanager
async def open_delay_proxy(port: int, *, delays: list[float]) -> AsyncIterator[str]:
    """Yields the proxy's base URL (``http://127.0.0.1:<port>``)."""

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, upstream, None)
                tg.start_soon(_pump, upstream, client, delays)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    own_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://127.0.0.1:{own_port}"
        finally:
            tg.cancel_scope.cancel()
