"""Transport counters: plain integers bumped inline, read by the metrics collector."""

from __future__ import annotations

from collections import Counter

from ..protocol import Transport


class TransportStats:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "errors",
        "messages_in",
        "messages_out",
        "open",
        "rejections",
    )

    def __init__(self) -> None:
        self.messages_in = {Transport.WS: 0, Transport.HTTP: 0}
        self.messages_out = {Transport.WS: 0, Transport.HTTP: 0}
        self.bytes_in = {Transport.WS: 0, Transport.HTTP: 0}
        self.bytes_out = {Transport.WS: 0, Transport.HTTP: 0}
        self.open = {Transport.WS: 0, Transport.HTTP: 0}
        self.errors: Counter[tuple[Transport, str]] = Counter()
        self.rejections: Counter[tuple[Transport, int]] = Counter()

    def received(self, transport: Transport, size: int) -> None:
        self.messages_in[transport] += 1
        self.bytes_in[transport] += size

    def sent(self, transport: Transport, size: int) -> None:
        self.messages_out[transport] += 1
        self.bytes_out[transport] += size

    def opened(self, transport: Transport) -> None:
        self.open[transport] += 1

    def closed(self, transport: Transport) -> None:
        self.open[transport] -= 1

    def protocol_error(self, transport: Transport, kind: str) -> None:
        self.errors[transport, kind] += 1

    def rejected(self, transport: Transport, status: int) -> None:
        self.rejections[transport, status] += 1
