"""Transport counters: plain integers bumped inline, read by the metrics collector.

The WebSocket message counters are separate attributes rather than dicts keyed by transport:
they are bumped twice per message on the hot path, where an attribute add is the cheapest
thing Python offers. The dict views (``messages_in`` ...) are for the collector.
"""

from __future__ import annotations

from collections import Counter

from ..protocol import Transport


class TransportStats:
    __slots__ = (
        "errors",
        "handed_off",
        "http_bytes_in",
        "http_bytes_out",
        "http_in",
        "http_open",
        "http_out",
        "rejections",
        "tcp_evicted",
        "tcp_open",
        "tcp_refused",
        "timeouts",
        "upgrades_evicted",
        "ws_bytes_in",
        "ws_bytes_out",
        "ws_in",
        "ws_open",
        "ws_out",
    )

    def __init__(self) -> None:
        self.ws_in = self.ws_bytes_in = self.ws_out = self.ws_bytes_out = 0
        self.http_in = self.http_bytes_in = self.http_out = self.http_bytes_out = 0
        self.ws_open = self.http_open = 0
        self.tcp_open = 0  # sockets on the shared port, whatever they carry
        self.tcp_refused = 0  # accepted and closed at once: no descriptor to spare
        self.tcp_evicted = 0  # idle before their first request, dropped to make room
        self.handed_off = 0  # requests passed to the REST application (REST, metrics, probes)
        self.upgrades_evicted = 0  # silent upgrades dropped to free a handshake slot
        self.errors: Counter[tuple[Transport, str]] = Counter()
        self.rejections: Counter[tuple[Transport, int]] = Counter()
        self.timeouts: Counter[str] = Counter()  # by phase: handshake, body, message, close...

    # -- collector views ---------------------------------------------------------------
    @property
    def messages_in(self) -> dict[Transport, int]:
        return {Transport.WS: self.ws_in, Transport.HTTP: self.http_in}

    @property
    def messages_out(self) -> dict[Transport, int]:
        return {Transport.WS: self.ws_out, Transport.HTTP: self.http_out}

    @property
    def bytes_in(self) -> dict[Transport, int]:
        return {Transport.WS: self.ws_bytes_in, Transport.HTTP: self.http_bytes_in}

    @property
    def bytes_out(self) -> dict[Transport, int]:
        return {Transport.WS: self.ws_bytes_out, Transport.HTTP: self.http_bytes_out}

    @property
    def open(self) -> dict[Transport, int]:
        return {Transport.WS: self.ws_open, Transport.HTTP: self.http_open}

    # -- slow-path updates ---------------------------------------------------------------
    def protocol_error(self, transport: Transport, kind: str) -> None:
        self.errors[transport, kind] += 1

    def rejected(self, transport: Transport, status: int) -> None:
        self.rejections[transport, status] += 1

    def timed_out(self, phase: str) -> None:
        self.timeouts[phase] += 1
