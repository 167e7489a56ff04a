"""wsload: a cheap WebSocket OpAMP load generator (asyncio + uvloop, several processes).

Why it exists: the trio simulator (``opamp_fast.sim``) spends ~215 us of CPU per round
trip, which on a shared 2-core machine swamps a server that should cost ~25 us per message.
This generator does the minimum per message, so the server's figure is not drowned in its own:

* one ``asyncio.Protocol`` object with ``__slots__`` per agent, no task per agent (a small pool
  of connector tasks performs the handshakes; heartbeats come from one timer per process that
  walks a wheel of slots, each agent sitting in the slot of its phase);
* hand-written HTTP upgrade (request and 101 check), hand-written parsing of the server's
  unmasked frames, client frames "preframed" with a zero mask key so the payload goes out as is:
  ``0x82, len|0x80 (+ext len), 4 zero bytes, 0x00 header, protobuf``;
* heartbeats ``{instance_uid, sequence_num, capabilities}`` hand-encoded (a bytes prefix per
  agent, the sequence number as a varint, a constant tail); the full state goes through protobuf;
* round trips go into per-second log-bucket histograms (2 % buckets) that the parent merges.

One parent process starts ``--procs`` workers (this file with ``--worker``), gives them the
same start instant ``t0`` (CLOCK_MONOTONIC is system-wide), splits the agents between them
(global index ``i`` goes to worker ``i % procs``, so each worker ramps over the whole
``--ramp-s``), prints a progress line a second on stderr and writes one merged JSON (stdout or
``--out``).

Timeline (all relative to ``t0``): agent ``i`` of ``N`` connects at ``ramp_s * i / N`` (at most
``--connect-concurrency`` handshakes in flight), sends its full state, then heartbeats at
``t0 + (frac(i * 0.618...) + k) * heartbeat_s``: golden-ratio phases spread evenly over the
interval, for the whole fleet and for every prefix of it, so the load is smooth during the ramp
too (phases ``i / N`` would put the first agents to connect all in the first part of the interval
and make the ramp bursty). A slot is skipped while the previous request is unanswered. At
``ramp_s + hold_s`` every agent closes (after an ``agent_disconnect`` with ``--goodbye``) and the
workers exit. ``--idle``: connect and full state only, no heartbeats (connect cost and RSS per
idle agent).

Limits: ``--agents`` <= 200,000, ``--ramp-s + --hold-s`` <= 3600, loopback targets only; the
workers carry an alarm, and stop when the parent disappears.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import errno
import gc
import hashlib
import ipaddress
import json
import math
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Final
from urllib.parse import urlsplit

MAX_AGENTS: Final = 200_000
MAX_DURATION_S: Final = 3600.0
MAX_PROCS: Final = 64
DEFAULT_CAPABILITIES: Final = 0x3907
_FD_RESERVE: Final = 64
_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_EARLY_S: Final = 0.0015  # uvloop rounds timers to whole ms: a tick may fire that much early
_GOLDEN: Final = (math.sqrt(5.0) - 1.0) / 2.0  # heartbeat phases: low-discrepancy sequence
_CLOSE_FRAME: Final = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # 1000, zero mask key
_BACKOFF_INITIAL_S: Final = 0.5
_BACKOFF_MAX_S: Final = 60.0
_SERVICES: Final = (
    "checkout", "cart", "payments", "frontend", "search", "inventory", "shipping", "email",
    "recommendation", "ads", "currency", "quote", "fraud-detection", "accounting", "gateway",
)  # fmt: skip
_EFFECTIVE_CONFIG: Final = (
    b"receivers:\n  otlp:\n    protocols:\n      grpc: {}\n      http: {}\n"
    b"processors:\n  batch: {}\n"
    b"exporters:\n  otlp:\n    endpoint: collector.internal:4317\n"
    b"service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n"
    b"      processors: [batch]\n      exporters: [otlp]\n"
)
# Client frame heads for payloads under 126 bytes (0x00 header byte included in the payload):
# FIN|binary, MASK|len, a zero mask key.
_HEADS: Final = tuple(bytes((0x82, 0x80 | n)) + b"\x00\x00\x00\x00" for n in range(126))
_VARINTS: Final = tuple(bytes((n,)) for n in range(128))

# agent states
_IDLE, _CONNECTING, _UPGRADING, _OPEN, _CLOSING = range(5)

# -- latency histogram (shared by parent and workers) ----------------------------------------

_H_MIN_S: Final = 1e-6
_H_GROWTH: Final = 1.02
_H_INV_LOG: Final = 1.0 / math.log(_H_GROWTH)
_H_BUCKETS: Final = int(math.log(MAX_DURATION_S / _H_MIN_S) / math.log(_H_GROWTH)) + 2


def bucket(seconds: float, _log: Any = math.log) -> int:
    """Index of the 2 %-wide log bucket holding ``seconds`` (1 us .. 1 h)."""
    if seconds <= _H_MIN_S:
        return 0
    i = int(_log(seconds * 1e6) * _H_INV_LOG) + 1
    return i if i < _H_BUCKETS else _H_BUCKETS - 1


def merge_into(dst: dict[int, int], src: dict[Any, int]) -> None:
    for k, n in src.items():
        k = int(k)
        dst[k] = dst.get(k, 0) + n


def hist_summary(counts: dict[int, int], max_s: float) -> dict[str, float | int]:
    """count, p50/p90/p99/p999 (upper bucket edge, capped by the max) and max, in ms."""
    total = sum(counts.values())
    out: dict[str, float | int] = {"count": total}
    keys = sorted(counts)
    for name, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        value = 0.0
        if total:
            rank = max(1, math.ceil(q / 100.0 * total))
            seen = 0
            for k in keys:
                seen += counts[k]
                if seen >= rank:
                    value = min(_H_MIN_S * _H_GROWTH**k, max_s)
                    break
        out[name] = round(value * 1000.0, 3)
    out["max"] = round(max_s * 1000.0, 3)
    return out


# -- helpers ------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 128:
        return _VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame with a zero mask key (payload bytes unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def retry_after_of(header_lines: list[bytes]) -> int:
    """The whole seconds of a ``Retry-After`` header among the response's header lines (0)."""
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            text = value.strip()
            return int(text) if text.isdigit() and len(text) < 6 else 0
    return 0


def uuid_text(uid: bytes) -> str:
    h = uid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}" if len(h) == 32 else h


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_source_addrs(text: str) -> list[str]:
    """``127.0.0.2-127.0.0.9`` or ``127.0.0.2,127.0.0.3``; loopback only."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "-" in part:
            lo, hi = (ipaddress.IPv4Address(x.strip()) for x in part.split("-", 1))
            out += [str(ipaddress.IPv4Address(n)) for n in range(int(lo), int(hi) + 1)]
        else:
            out.append(str(ipaddress.ip_address(part)))
    for addr in out:
        if not is_loopback(addr):
            raise ValueError(f"source address {addr} is not a loopback address")
    return out


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a ws:// (or http://) loopback URL; refuses any other host."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "http"):
        raise ValueError(f"--url {url!r}: use ws://HOST:PORT/PATH")
    host = parts.hostname or ""
    infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM) if host else []
    addrs = {str(info[4][0]) for info in infos}
    if not addrs or not all(is_loopback(a) for a in addrs):
        raise ValueError(f"--url {url!r}: wsload only targets loopback servers (127.0.0.0/8)")
    return sorted(addrs)[0], parts.port or 80, parts.path or "/"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_and_wakeups() -> tuple[float, int]:
    """CPU seconds (user + sys) and voluntary context switches (sleeps) of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


def os_error_kind(prefix: str, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{prefix}_{errno.errorcode.get(exc.errno, str(exc.errno)).lower()}"
    return f"{prefix}_{type(exc).__name__.lower()}"


class UpgradeFailed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


# -- worker: one agent ----------------------------------------------------------------------


class Agent(asyncio.Protocol):
    """One simulated agent: its identity, its socket's protocol state, one request in flight."""

    __slots__ = (
        "accept", "attempts", "backoff", "buf", "down_at", "frag", "full_due", "gen", "gidx",
        "hb_prefix", "ready", "retry_after", "sent_at", "seq", "src", "state", "t_start",
        "transport", "uid", "waiter",
    )  # fmt: skip

    def __init__(self, gen: Gen, gidx: int, src: str | None) -> None:
        self.gen = gen
        self.gidx = gidx
        self.src = src
        self.set_uid(os.urandom(16))
        self.seq = 0
        self.state = _IDLE
        self.transport: Any = None
        self.buf = b""
        self.frag = b""
        self.sent_at = 0.0
        self.full_due = True
        self.ready = False
        self.waiter: asyncio.Future[None] | None = None
        self.accept = b""
        self.attempts = 0
        self.backoff = _BACKOFF_INITIAL_S  # opamp-go's current interval
        self.retry_after = 0  # the Retry-After of the last refusal, seconds
        self.down_at = 0.0  # when an open connection was lost (0: not waiting to return)
        self.t_start = 0.0

    def set_uid(self, uid: bytes) -> None:
        self.uid = uid
        self.hb_prefix = b"\x0a" + varint(len(uid)) + uid + b"\x10"

    # messages

    def full_state(self) -> bytes:
        gen = self.gen
        msg = gen.pb.AgentToServer(
            instance_uid=self.uid, sequence_num=self.seq, capabilities=gen.caps
        )
        desc = msg.agent_description
        for key, value in (
            ("service.name", _SERVICES[self.gidx % len(_SERVICES)]),
            ("service.namespace", "shop"),
            ("service.instance.id", uuid_text(self.uid)),
            ("service.version", "0.114.0"),
        ):
            kv = desc.identifying_attributes.add()
            kv.key = key
            kv.value.string_value = value
        for key, value in (
            ("host.name", f"node-{self.gidx // 40:05d}.cluster.local"),
            ("host.arch", "amd64"),
            ("os.type", "linux"),
            ("os.description", "Ubuntu 22.04.4 LTS"),
            ("process.runtime.name", "go"),
            ("deployment.environment", "production"),
        ):
            kv = desc.non_identifying_attributes.add()
            kv.key = key
            kv.value.string_value = value
        msg.health.healthy = True
        msg.health.status = "StatusOK"
        msg.health.start_time_unix_nano = 1_700_000_000_000_000_000 + self.gidx
        if gen.caps & 0x20:  # ReportsEffectiveConfig
            entry = msg.effective_config.config_map.config_map[""]
            entry.body = _EFFECTIVE_CONFIG
            entry.content_type = "text/yaml"
        body: bytes = msg.SerializeToString()
        return b"\x00" + body

    def send_next(self) -> None:
        """Send the full state when due, else a heartbeat; start the round-trip clock."""
        gen = self.gen
        if self.full_due:
            self.full_due = False
            payload = self.full_state()
            gen.full_sent += 1
            frame = client_frame(payload)
        else:
            payload = b"\x00" + self.hb_prefix + varint(self.seq) + gen.caps_tail
            gen.hb_sent += 1
            frame = _HEADS[len(payload)] + payload if len(payload) < 126 else client_frame(payload)
        self.seq += 1
        gen.sent += 1
        self.sent_at = time.monotonic()
        self.transport.write(frame)

    def goodbye(self) -> None:
        gen = self.gen
        msg = gen.pb.AgentToServer(
            instance_uid=self.uid, sequence_num=self.seq, capabilities=gen.caps
        )
        msg.agent_disconnect.SetInParent()
        self.seq += 1
        gen.goodbyes += 1
        self.transport.write(client_frame(b"\x00" + msg.SerializeToString()))

    # asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.state = _UPGRADING
        self.gen.live += 1
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        transport.write(self.gen.request_head + key + self.gen.request_tail)

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN or self.state == _CLOSING:
            self.frames(data)
        elif self.state == _UPGRADING:
            self.upgrade(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        gen = self.gen
        gen.live -= 1
        state, self.state = self.state, _IDLE
        self.transport = None
        self.buf = self.frag = b""
        if state == _OPEN:
            gen.connected -= 1
            if self.sent_at:
                gen.lost_in_flight += 1
            self.sent_at = 0.0
            gen.went_down(self)
            gen.error(os_error_kind("closed", exc) if exc else "closed_by_server")
            gen.maybe_reconnect(self)
        elif state == _CLOSING:
            gen.connected -= 1
            gen.closed_ok += 1
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpgradeFailed("upgrade_closed"))

    # wire

    def upgrade(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self.fail_upgrade("upgrade_head_too_long")
            else:
                self.buf = buf
            return
        self.buf = b""
        lines = buf[:end].split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"101":
            code = status[1].decode("ascii", "replace") if len(status) > 1 else "garbage"
            self.retry_after = retry_after_of(lines[1:])
            self.fail_upgrade(f"upgrade_status_{code}")
            return
        accept = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip()
        if accept != self.accept:
            self.fail_upgrade("upgrade_bad_accept")
            return
        gen = self.gen
        self.state = _OPEN
        self.attempts = 0
        self.backoff = _BACKOFF_INITIAL_S
        gen.on_open(self)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.full_due = True
        self.send_next()
        rest = buf[end + 4 :]
        if rest:
            self.frames(rest)

    def fail_upgrade(self, kind: str) -> None:
        self.state = _IDLE  # connection_lost must not count it as an open connection closing
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpgradeFailed(kind))
        if self.transport is not None:
            self.transport.abort()

    def frames(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            end = pos + head + length
            if end > n:
                break
            payload = data[pos + head : end]
            if masked:  # servers must not mask; unmask anyway and count it
                self.gen.error("masked_server_frame")
                key = data[pos + head - 4 : pos + head] * (length // 4 + 1)
                payload = bytes(a ^ b for a, b in zip(payload, key, strict=False))
            b0 = data[pos]
            pos = end
            if b0 == 0x82:
                self.reply(payload)
            else:
                self.control(b0, payload)
            if self.transport is None:
                return
        if pos < n:
            self.buf = data[pos:]

    def control(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        gen = self.gen
        if opcode in (0x2, 0x0):  # fragmented binary message
            self.frag += payload
            if fin:
                payload, self.frag = self.frag, b""
                self.reply(payload)
        elif opcode == 0x8:
            if self.state == _CLOSING:
                self.transport.close()
                return
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            gen.error(f"server_close_{code}")
            self.transport.write(_CLOSE_FRAME)
            self.transport.close()
        elif opcode == 0x9:
            self.transport.write(client_frame(payload, 0xA))
        elif opcode == 0xA:
            pass
        else:
            gen.error(f"unexpected_opcode_{opcode}")

    def reply(self, payload: bytes) -> None:
        gen = self.gen
        sent_at = self.sent_at
        if sent_at:
            rtt = time.monotonic() - sent_at
            self.sent_at = 0.0
            gen.answered += 1
            i = bucket(rtt)
            win = gen.win
            win[i] = win.get(i, 0) + 1
            if rtt > gen.win_max:
                gen.win_max = rtt
            if not self.ready:  # the reply to the state sent on (re)connecting: counted apart
                first = gen.win_first
                first[i] = first.get(i, 0) + 1
        elif self.state != _CLOSING:  # (a reply to a goodbye is not unsolicited)
            gen.unsolicited += 1
        if payload[:1] == b"\x00":
            payload = payload[1:]
        elif payload and payload[0] < 8:
            gen.error("bad_header")
            return
        try:
            msg = gen.pb.ServerToAgent.FromString(payload)
        except Exception:
            gen.error("bad_protobuf")
            return
        if msg.flags & 1:  # ReportFullState
            self.full_due = True
            gen.full_state_requests += 1
        if msg.HasField("agent_identification"):
            new = msg.agent_identification.new_instance_uid
            if new:
                self.set_uid(new)
                self.full_due = True
                gen.uid_reassignments += 1
        if msg.HasField("error_response"):
            gen.error(f"error_response_{msg.error_response.type}")
        if not self.ready:
            self.ready = True
            gen.ready += 1


# -- worker: the process --------------------------------------------------------------------


class Gen:
    """One worker process: its agents, the wheel, the connectors, counters, per-second output."""

    def __init__(self, cfg: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        from opamp_fast.protocol import pb

        self.pb = pb
        self.cfg = cfg
        self.loop = loop
        self.caps = int(cfg["capabilities"])
        self.caps_tail = b"\x20" + varint(self.caps)
        host, port, path = cfg["host"], cfg["port"], cfg["path"]
        self.addr = (host, port)
        extra = "".join(f"{h}\r\n" for h in cfg["headers"])
        self.request_head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        ).encode()
        self.request_tail = f"\r\n{extra}\r\n".encode()
        total, procs, me = cfg["agents_total"], cfg["procs"], cfg["worker"]
        srcs: list[str] = cfg["source_addrs"]
        self.agents = [
            Agent(self, i, srcs[i % len(srcs)] if srcs else None) for i in range(me, total, procs)
        ]
        self.total = total
        self.ramp_s = float(cfg["ramp_s"])
        self.hold_s = float(cfg["hold_s"])
        self.heartbeat_s = float(cfg["heartbeat_s"])
        self.idle = bool(cfg["idle"])
        self.tick_s = float(cfg["tick_ms"]) / 1000.0  # heartbeat wheel and ramp resolution
        self.nslots = max(1, round(self.heartbeat_s / self.tick_s))
        self.slots: list[list[Agent]] = [[] for _ in range(self.nslots)]
        for agent in self.agents:
            phase = (agent.gidx * _GOLDEN) % 1.0
            self.slots[int(phase * self.nslots) % self.nslots].append(agent)
        self.nonempty = [i for i, slot in enumerate(self.slots) if slot]
        self.rng = random.Random(cfg["seed"] * 1000 + me)
        # counters (cumulative)
        self.sent = self.answered = self.full_sent = self.hb_sent = self.goodbyes = 0
        self.busy_skips = self.full_state_requests = self.uid_reassignments = 0
        self.unsolicited = self.lost_in_flight = self.closed_ok = self.reconnects = 0
        self.handshakes = self.live = self.connected = self.connected_max = self.ready = 0
        self.down = self.blips = 0  # agents away after a lost connection; blips made
        self.back_hist: dict[int, int] = {}  # how long they were away, once back
        self.back_max = 0.0
        self.connected_at_hold_end = -1
        self.errors: Counter[str] = Counter()
        self.errors_total = 0
        self.connect_first = self.connect_last = 0.0
        self.hs_hist: dict[int, int] = {}
        self.hs_max = 0.0
        self.win: dict[int, int] = {}  # every reply's round trip, this second
        self.win_first: dict[int, int] = {}  # of those, the first replies of new connections
        self.win_max = 0.0
        self.lag_max = 0.0  # how late the process's timer ran, at worst, this second
        self.tick_due = 0.0
        self.ending = False
        self.finished = False
        self.queue: asyncio.Queue[Agent] = asyncio.Queue()
        self.n_connectors = max(1, int(cfg["connect_concurrency"]))
        self.ppid = os.getppid()

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.errors_total += 1

    def emit(self, obj: dict[str, Any]) -> None:
        os.write(1, (json.dumps(obj, separators=(",", ":")) + "\n").encode())

    # schedule

    def start(self, t0: float) -> None:
        loop = self.loop
        self.t0 = t0
        self.t_end = t0 + self.ramp_s + self.hold_s
        self.close_deadline = self.t_end + float(self.cfg["close_timeout_s"])
        self.off = loop.time() - time.monotonic()
        self.next_agent = 0
        n = len(self.agents)
        # worker-local agent j is global me + j*procs; its connect time is ramp * gidx / total
        self.connect_at = [t0 + self.ramp_s * a.gidx / self.total for a in self.agents]
        self.hb_k = -1  # last wheel slot processed (slot k % nslots is due at tick k)
        self.sec = 0
        self.tasks = [loop.create_task(self.connector()) for _ in range(min(self.n_connectors, n))]
        # Each worker's ticks are offset by a fraction of a tick, so their bursts interleave.
        self.t_tick0 = t0 + self.tick_s * int(self.cfg["worker"]) / int(self.cfg["procs"])
        self.tick_due = self.t_tick0
        loop.call_at(self.t_tick0 + self.off, self.tick)
        loop.call_at(t0 + 1.0 + self.off, self.second)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_end)
        loop.add_signal_handler(signal.SIGUSR1, self.blip)

    def tick(self) -> None:
        """The process's one timer: feeds the ramp, sends due heartbeats, ends the run. It
        sleeps until the next tick (on the ``tick_s`` grid) that has work: a connect due, a
        non-empty heartbeat slot, the end; at most 100 ms (idle agents cost no wake-ups)."""
        now = time.monotonic() + _EARLY_S
        late = now - self.tick_due  # this process's own loop lag: it delays every reply read
        if late > self.lag_max:
            self.lag_max = late
        if not self.ending:
            agents, at, queue = self.agents, self.connect_at, self.queue
            while self.next_agent < len(agents) and at[self.next_agent] <= now:
                queue.put_nowait(agents[self.next_agent])
                self.next_agent += 1
            if now >= self.t_end:
                self.begin_end()
            elif not self.idle:
                self.heartbeats(now)
        if self.ending:
            if self.live == 0 or now >= self.close_deadline:
                self.finish()
                return
            nxt = now + 0.05
        else:
            nxt = min(self.t_end, now + 0.1)
            if self.next_agent < len(self.agents):
                nxt = min(nxt, self.connect_at[self.next_agent])
            if not self.idle:
                nxt = min(nxt, self.next_slot_time())
            # round up onto the tick grid (each worker's grid is offset from the others')
            nxt = self.t_tick0 + math.ceil((nxt - self.t_tick0) / self.tick_s - 1e-9) * self.tick_s
        self.tick_due = max(nxt, now)
        self.loop.call_at(self.tick_due + self.off, self.tick)

    def next_slot_time(self) -> float:
        """When the next non-empty heartbeat slot after the last one processed is due."""
        nonempty, nslots = self.nonempty, self.nslots
        if not nonempty:
            return math.inf
        k = self.hb_k + 1
        s = k % nslots
        i = bisect.bisect_left(nonempty, s)
        nk = k + (nonempty[i] - s) if i < len(nonempty) else k + (nslots - s) + nonempty[0]
        return self.t_tick0 + nk * self.tick_s

    def heartbeats(self, now: float) -> None:
        k = int((now - self.t_tick0) / self.tick_s)
        done = self.hb_k
        if k - done > self.nslots:
            done = k - self.nslots
        slots, nslots = self.slots, self.nslots
        timeout = float(self.cfg["response_timeout_s"])
        while done < k:
            done += 1
            for agent in slots[done % nslots]:
                if agent.state != _OPEN or not agent.ready:
                    continue
                if agent.sent_at:
                    self.busy_skips += 1
                    if now - agent.sent_at > timeout:
                        self.error("response_timeout")
                        agent.sent_at = 0.0  # give up on that one; send again next slot
                    continue
                agent.send_next()
        self.hb_k = done

    def second(self) -> None:
        """Flush the per-second window (second ``sec`` covers [t0 + sec, t0 + sec + 1))."""
        if self.finished:
            return
        self.flush_window()
        self.sec += 1
        if os.getppid() != self.ppid and not self.ending:
            self.begin_end()  # orphaned
        self.loop.call_at(self.t0 + self.sec + 1.0 + self.off, self.second)

    def flush_window(self) -> None:
        cpu, vcsw = cpu_and_wakeups()
        self.emit(
            {
                "type": "sec",
                "k": self.sec,
                "conn": self.connected,
                "sent": self.sent,
                "ans": self.answered,
                "hs": self.handshakes,
                "err": self.errors_total,
                "cpu": round(cpu, 4),
                "vcsw": vcsw,
                "down": self.down,
                "h": self.win,
                "hf": self.win_first,
                "mx": self.win_max,
                "lag": round(self.lag_max, 4),
            }
        )
        self.win = {}
        self.win_first = {}
        self.win_max = 0.0
        self.lag_max = 0.0

    # connects

    async def connector(self) -> None:
        queue = self.queue
        while True:
            agent = await queue.get()
            if self.ending:
                return
            await self.connect(agent)

    async def connect(self, agent: Agent) -> None:
        loop = self.loop
        agent.state = _CONNECTING
        agent.ready = False
        agent.t_start = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        kind = ""
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if agent.src:
                sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((agent.src, 0))
            agent.waiter = loop.create_future()
            async with asyncio.timeout(float(self.cfg["connect_timeout_s"])):
                await loop.sock_connect(sock, self.addr)
                await loop.create_connection(lambda: agent, sock=sock)
                await agent.waiter
        except TimeoutError:
            kind = "connect_timeout" if agent.state == _CONNECTING else "handshake_timeout"
        except UpgradeFailed as exc:
            kind = exc.kind
        except OSError as exc:
            kind = os_error_kind("connect", exc)
        except asyncio.CancelledError:  # the run ended (begin_end) with this handshake in flight
            self.error("connect_aborted_at_end")
            self.abort_connect(agent, sock)
            raise
        finally:
            agent.waiter = None
        if kind:
            if self.ending:
                kind = "connect_aborted_at_end"  # our own abort, not the server's doing
            self.error(kind)
            self.abort_connect(agent, sock)
            self.maybe_reconnect(agent)

    @staticmethod
    def abort_connect(agent: Agent, sock: socket.socket) -> None:
        agent.state = _IDLE  # connection_lost must not count it as an open connection closing
        if agent.transport is not None:
            agent.transport.abort()
        else:
            sock.close()

    def on_open(self, agent: Agent) -> None:
        now = time.monotonic()
        self.handshakes += 1
        self.connected += 1
        if self.connected > self.connected_max:
            self.connected_max = self.connected
        if not self.connect_first:
            self.connect_first = now
        self.connect_last = now
        took = now - agent.t_start
        i = bucket(took)
        self.hs_hist[i] = self.hs_hist.get(i, 0) + 1
        self.hs_max = max(self.hs_max, took)
        if agent.down_at:  # back after a lost connection: how long it was away
            away = now - agent.down_at
            agent.down_at = 0.0
            self.down -= 1
            j = bucket(away)
            self.back_hist[j] = self.back_hist.get(j, 0) + 1
            self.back_max = max(self.back_max, away)

    def went_down(self, agent: Agent) -> None:
        if not agent.down_at and not self.ending:
            agent.down_at = time.monotonic()
            self.down += 1

    def blip(self) -> None:
        """A network blip: every open connection is dropped at once (SIGUSR1)."""
        self.blips += 1
        for agent in self.agents:
            if agent.state == _OPEN and agent.transport is not None:
                agent.transport.abort()  # connection_lost: down, then reconnect

    def maybe_reconnect(self, agent: Agent) -> None:
        if not self.cfg["reconnect"] or self.ending:
            return
        agent.attempts += 1
        if self.cfg["backoff"] == "opamp-go":
            # cenkalti/backoff's ExponentialBackOff as opamp-go's client uses it: the interval
            # starts at 0.5 s and grows 1.5x up to 60 s; each delay is within +-50 % of it.
            interval = agent.backoff
            delay = interval * (0.5 + self.rng.random())
            agent.backoff = min(_BACKOFF_MAX_S, interval * 1.5)
        else:  # exponential with full jitter: 0.5 s doubling, capped at 30 s
            delay = min(30.0, 0.5 * 2 ** min(agent.attempts, 10)) * self.rng.random()
        if self.cfg["honour_retry_after"] and agent.retry_after:
            delay = float(agent.retry_after)  # the server said when: opamp-go waits that long
        agent.retry_after = 0
        self.reconnects += 1
        agent.full_due = True
        self.loop.call_later(delay, self._requeue, agent)

    def _requeue(self, agent: Agent) -> None:
        if not self.ending and agent.state == _IDLE:
            self.queue.put_nowait(agent)

    # end

    def begin_end(self) -> None:
        if self.ending:
            return
        self.ending = True
        self.connected_at_hold_end = self.connected
        self.t_ending = time.monotonic()
        self.close_deadline = min(
            self.close_deadline, self.t_ending + float(self.cfg["close_timeout_s"])
        )
        while not self.queue.empty():
            self.queue.get_nowait()
        for task in self.tasks:  # handshakes in flight are aborted (connect_aborted_at_end)
            task.cancel()
        goodbye = bool(self.cfg["goodbye"])
        for agent in self.agents:
            if agent.state == _OPEN:
                agent.state = _CLOSING
                try:
                    if goodbye:
                        agent.goodbye()
                    agent.transport.write(_CLOSE_FRAME)
                except Exception:
                    agent.transport.abort()
            elif agent.transport is not None and agent.state != _CLOSING:
                agent.state = _IDLE
                agent.transport.abort()

    def finish(self) -> None:
        self.finished = True
        aborted = 0
        for agent in self.agents:
            if agent.transport is not None:
                aborted += 1
                agent.transport.abort()
        if aborted:
            self.errors["close_timeout"] += aborted
        for task in self.tasks:
            task.cancel()
        self.loop.call_soon(self.loop.stop)

    def done_record(self) -> dict[str, Any]:
        return {
            "type": "done",
            "worker": self.cfg["worker"],
            "agents": len(self.agents),
            "sent": self.sent,
            "answered": self.answered,
            "full_states_sent": self.full_sent,
            "heartbeats_sent": self.hb_sent,
            "goodbyes_sent": self.goodbyes,
            "busy_skips": self.busy_skips,
            "full_state_requests": self.full_state_requests,
            "uid_reassignments": self.uid_reassignments,
            "unsolicited_replies": self.unsolicited,
            "lost_in_flight": self.lost_in_flight,
            "closed_ok": self.closed_ok,
            "reconnects": self.reconnects,
            "handshakes": self.handshakes,
            "ready": self.ready,
            "connected_max": self.connected_max,
            "connected_at_hold_end": self.connected_at_hold_end,
            "connect_first": self.connect_first,
            "connect_last": self.connect_last,
            "hs_hist": self.hs_hist,
            "hs_max": self.hs_max,
            "back_hist": self.back_hist,
            "back_max": self.back_max,
            "still_down": self.down,
            "blips": self.blips,
            "errors": dict(self.errors),
            "cpu_s": round(cpu_seconds(), 4),
            "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }


def worker_main(cfg_json: str) -> int:
    import uvloop

    cfg = json.loads(cfg_json)
    signal.alarm(int(cfg["ramp_s"] + cfg["hold_s"] + cfg["close_timeout_s"] + 120))
    mine = len(range(cfg["worker"], cfg["agents_total"], cfg["procs"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    gen = Gen(cfg, loop)
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    gen.emit({"type": "ready", "agents": mine, "pid": os.getpid()})
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "go":
        return 2
    gen.start(float(line[1]))
    try:
        loop.run_forever()
    finally:
        gen.flush_window()
        gen.emit(gen.done_record())
        loop.close()
    return 0


# -- parent ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="ws://127.0.0.1:4320/v1/opamp", help="ws://HOST:PORT/PATH")
    p.add_argument("--path", default=None, help="override the URL's path")
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    p.add_argument("--agents", type=int, required=True)
    p.add_argument("--procs", type=int, default=2, help="worker processes")
    p.add_argument("--ramp-s", type=float, default=10.0)
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--heartbeat-s", type=float, default=30.0)
    p.add_argument("--idle", action="store_true", help="connect + full state, no heartbeats")
    p.add_argument("--goodbye", action="store_true", help="send agent_disconnect before closing")
    p.add_argument("--reconnect", action="store_true", help="reconnect after a failure or a close")
    p.add_argument(
        "--backoff",
        choices=("full-jitter", "opamp-go"),
        default="full-jitter",
        help="reconnect delays: 0.5 s doubling to 30 s with full jitter, or opamp-go's client "
        "(0.5 s growing 1.5x to 60 s, +-50 %%)",
    )
    p.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="after a 503 with Retry-After wait that long (as opamp-go's client does)",
    )
    p.add_argument("--capabilities", type=lambda s: int(s, 0), default=DEFAULT_CAPABILITIES)
    p.add_argument("--connect-concurrency", type=int, default=256, help="handshakes in flight")
    p.add_argument("--connect-timeout-s", type=float, default=10.0)
    p.add_argument("--response-timeout-s", type=float, default=30.0)
    p.add_argument("--close-timeout-s", type=float, default=15.0)
    p.add_argument("--source-addrs", default="", help="e.g. 127.0.0.2-127.0.0.9 (round-robin)")
    p.add_argument("--steady-trim-s", type=float, default=2.0, help="cut from each hold end")
    p.add_argument("--tick-ms", type=float, default=5.0, help="heartbeat wheel resolution")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="", help="write the JSON here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, int, str]:
    if not 1 <= args.agents <= MAX_AGENTS:
        p.error(f"--agents must be between 1 and {MAX_AGENTS}")
    if not 1 <= args.procs <= MAX_PROCS:
        p.error(f"--procs must be between 1 and {MAX_PROCS}")
    if args.ramp_s < 0 or args.hold_s <= 0 or args.ramp_s + args.hold_s > MAX_DURATION_S:
        p.error(f"need --ramp-s >= 0, --hold-s > 0 and ramp + hold <= {MAX_DURATION_S:.0f} s")
    if args.heartbeat_s < 0.05:
        p.error("--heartbeat-s must be at least 0.05")
    for h in args.header:
        if ":" not in h or "\r" in h or "\n" in h:
            p.error(f"--header {h!r}: use 'Name: value'")
    try:
        host, port, path = parse_url(args.url)
        args.source_addrs_list = parse_source_addrs(args.source_addrs)
    except (ValueError, OSError) as exc:
        p.error(str(exc))
    per_proc = math.ceil(args.agents / args.procs)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and per_proc + _FD_RESERVE > hard:
        p.error(
            f"{per_proc} agents per process need ~{per_proc + _FD_RESERVE} file descriptors; "
            f"RLIMIT_NOFILE hard limit is {hard}: raise --procs"
        )
    if args.source_addrs_list:
        per_src = math.ceil(args.agents / len(args.source_addrs_list))
        if per_src > 28000:
            p.error(f"{per_src} agents per source address exceed ~28k ephemeral ports")
    elif args.agents > 28000:
        p.error("more than ~28k agents need --source-addrs (ephemeral ports per address)")
    return host, port, args.path or path


class Parent:
    """Starts the workers, aligns them on t0, merges their per-second records and results."""

    def __init__(self, args: argparse.Namespace, host: str, port: int, path: str) -> None:
        self.args = args
        self.host, self.port, self.path = host, port, path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.bufs: dict[int, bytes] = {}
        self.secs: dict[int, dict[int, dict[str, Any]]] = {}  # k -> worker -> record
        self.done: dict[int, dict[str, Any]] = {}
        self.ready: dict[int, dict[str, Any]] = {}
        self.printed = -1
        self.last_k: dict[int, int] = {}  # worker -> last second it reported

    def cumulative(self, k: int) -> dict[int, dict[str, Any]] | None:
        """Each worker's record for second k; a worker that has finished (or died) early counts
        with its last record (its cumulative counters stop growing). None while a worker that is
        still running has not reported k yet."""
        recs = self.secs.get(k, {})
        out: dict[int, dict[str, Any]] = {}
        for w, proc in enumerate(self.procs):
            rec = recs.get(w)
            if rec is None:
                last = self.last_k.get(w, -1)
                if last >= k or (w not in self.done and proc.poll() is None) or last < 0:
                    return None
                rec = self.secs[last][w]
            out[w] = rec
        return out

    def worker_cfg(self, w: int) -> dict[str, Any]:
        a = self.args
        return {
            "worker": w,
            "procs": a.procs,
            "agents_total": a.agents,
            "host": self.host,
            "port": self.port,
            "path": self.path,
            "headers": a.header,
            "ramp_s": a.ramp_s,
            "hold_s": a.hold_s,
            "heartbeat_s": a.heartbeat_s,
            "idle": a.idle,
            "goodbye": a.goodbye,
            "reconnect": a.reconnect,
            "backoff": a.backoff,
            "honour_retry_after": a.honour_retry_after,
            "capabilities": a.capabilities,
            "connect_concurrency": math.ceil(a.connect_concurrency / a.procs),
            "connect_timeout_s": a.connect_timeout_s,
            "response_timeout_s": a.response_timeout_s,
            "close_timeout_s": a.close_timeout_s,
            "source_addrs": a.source_addrs_list,
            "seed": a.seed,
            "tick_ms": a.tick_ms,
        }

    def spawn(self) -> None:
        for w in range(self.args.procs):
            cfg = json.dumps(self.worker_cfg(w))
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", cfg]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.procs.append(proc)
            self.bufs[w] = b""

    def pump(self, sel: selectors.BaseSelector, timeout: float) -> None:
        for key, _ in sel.select(timeout):
            w = int(key.data)
            chunk = os.read(key.fd, 1 << 20)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = self.bufs[w] + chunk
            *lines, self.bufs[w] = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.handle(w, json.loads(line))

    def handle(self, w: int, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "ready":
            self.ready[w] = rec
        elif kind == "sec":
            k = int(rec["k"])
            self.secs.setdefault(k, {})[w] = rec
            self.last_k[w] = max(self.last_k.get(w, -1), k)
        elif kind == "done":
            self.done[w] = rec

    def progress(self) -> None:
        """One stderr line per second that every worker has reported."""
        while (self.printed + 1) in self.secs:
            k = self.printed + 1
            recs = self.cumulative(k)
            if recs is None:
                return
            prev = self.cumulative(k - 1) if k else {}
            actual = self.secs[k].values()
            hist: dict[int, int] = {}
            mx = 0.0
            for rec in actual:
                merge_into(hist, rec["h"])
                mx = max(mx, rec["mx"])
            ans = sum(r["ans"] for r in recs.values())
            ans_prev = sum(r["ans"] for r in (prev or {}).values())
            s = hist_summary(hist, mx)
            if not self.args.quiet:
                sys.stderr.write(
                    f"[wsload] t={k + 1}s connected={sum(r['conn'] for r in actual)} "
                    f"msgs_per_s={ans - ans_prev} p50_ms={s['p50']} p99_ms={s['p99']} "
                    f"max_ms={s['max']} errors={sum(r['err'] for r in recs.values())}\n"
                )
                sys.stderr.flush()
            self.printed = k

    def forward_blip(self, signum: int, frame: Any) -> None:
        """SIGUSR1: every worker drops all its connections at once (a network blip)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)

    def stop_workers(self) -> None:
        """Let workers that reported "done" exit by themselves; SIGTERM, then SIGKILL, the rest."""
        grace = time.monotonic() + 5.0
        for w, proc in enumerate(self.procs):
            if w in self.done:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, grace - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + self.args.close_timeout_s + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def run(self) -> dict[str, Any]:
        a = self.args
        cpu_parent0 = cpu_seconds()
        self.spawn()
        sel = selectors.DefaultSelector()
        for w, proc in enumerate(self.procs):
            assert proc.stdout is not None
            sel.register(proc.stdout, selectors.EVENT_READ, w)
        interrupted = False
        try:
            deadline = time.monotonic() + 120
            while len(self.ready) < len(self.procs):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise SystemExit("wsload: a worker failed to start")
                self.pump(sel, 0.2)
            signal.signal(signal.SIGUSR1, self.forward_blip)
            t0 = time.monotonic() + 0.3
            t0_wall = time.time() + 0.3
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write(f"go {t0!r}\n".encode())
                proc.stdin.close()
            bound = t0 + a.ramp_s + a.hold_s + a.close_timeout_s + 30
            while len(self.done) < len(self.procs) and sel.get_map():
                if time.monotonic() > bound:
                    sys.stderr.write("[wsload] workers overran their bound; stopping them\n")
                    break
                self.pump(sel, 0.5)
                self.progress()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.stop_workers()
            with contextlib.suppress(Exception):
                self.pump(sel, 0.5)
            sel.close()
        self.progress()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.result(t0, t0_wall)
        result["interrupted"] = interrupted
        result["generator"]["cpu_s_parent"] = round(cpu_seconds() - cpu_parent0, 3)
        result["generator"]["cpu_s_children_rusage"] = round(
            children.ru_utime + children.ru_stime, 3
        )
        result["generator"]["worker_exit_codes"] = [p.returncode for p in self.procs]
        return result

    @staticmethod
    def returns(done: list[dict[str, Any]]) -> dict[str, Any]:
        """Agents whose open connection was lost (a blip, a server restart): how long they
        were away until their next connection opened, and how many never came back."""
        hist: dict[int, int] = {}
        for d in done:
            merge_into(hist, d.get("back_hist", {}))
        return {
            "blips": max((int(d.get("blips", 0)) for d in done), default=0),
            "came_back": sum(hist.values()),
            "away_s": {
                k: (v / 1000 if isinstance(v, float) else v)
                for k, v in hist_summary(
                    hist, max((d.get("back_max", 0.0) for d in done), default=0.0)
                ).items()
            },
            "still_away": sum(int(d.get("still_down", 0)) for d in done),
        }

    def result(self, t0: float, t0_wall: float) -> dict[str, Any]:
        a = self.args
        done = list(self.done.values())

        def total(key: str) -> int:
            return sum(int(d.get(key, 0)) for d in done)

        errors: Counter[str] = Counter()
        for d in done:
            errors.update(d["errors"])
        hs_hist: dict[int, int] = {}
        for d in done:
            merge_into(hs_hist, d["hs_hist"])
        firsts = [d["connect_first"] for d in done if d["connect_first"]]
        lasts = [d["connect_last"] for d in done if d["connect_last"]]
        connect_first = min(firsts) if firsts else 0.0
        connect_last = max(lasts) if lasts else 0.0
        ks = sorted(self.secs)

        def cum(k: int, key: str) -> float:
            """Sum over workers of a cumulative counter at the end of second k (k=-1: 0)."""
            if k < 0:
                return 0.0
            if key == "conn":  # a gauge, not a counter: only workers still reporting
                return float(sum(r[key] for r in self.secs.get(k, {}).values()))
            recs = self.cumulative(k)
            return float(sum(r[key] for r in recs.values())) if recs is not None else math.nan

        def window(k_from: int, k_to: int) -> dict[str, Any]:
            """Seconds [k_from, k_to): messages answered, latency, generator CPU."""
            hist: dict[int, int] = {}
            mx = 0.0
            for k in range(k_from, k_to):
                for rec in self.secs.get(k, {}).values():
                    merge_into(hist, rec["h"])
                    mx = max(mx, rec["mx"])
            span = max(k_to - k_from, 0)
            answered = cum(k_to - 1, "ans") - cum(k_from - 1, "ans")
            cpu = cum(k_to - 1, "cpu") - cum(k_from - 1, "cpu")
            vcsw = cum(k_to - 1, "vcsw") - cum(k_from - 1, "vcsw")
            ok = span > 0 and not math.isnan(answered) and not math.isnan(cpu)
            return {
                "start_s": k_from,
                "end_s": k_to,
                "start_monotonic": t0 + k_from,
                "end_monotonic": t0 + k_to,
                "start_wall": t0_wall + k_from,
                "end_wall": t0_wall + k_to,
                "messages_answered": int(answered) if ok else None,
                "messages_per_s": round(answered / span, 1) if ok else None,
                "latency_ms": hist_summary(hist, mx),
                "generator_cpu_s": round(cpu, 3) if ok else None,
                "generator_cpu_us_per_message": (
                    round(1e6 * cpu / answered, 2) if ok and answered > 0 else None
                ),
                "generator_cpu_percent": round(100.0 * cpu / span, 1) if ok else None,
                "generator_wakeups_per_message": (
                    round(vcsw / answered, 3) if ok and answered > 0 else None
                ),
            }

        hold_from = math.ceil(a.ramp_s)
        hold_to = math.floor(a.ramp_s + a.hold_s)
        settled = max(hold_from, math.ceil(connect_last - t0) if connect_last else hold_from)
        trim = math.ceil(a.steady_trim_s)
        steady = window(settled + trim, hold_to - trim)
        timeline = []
        for k in ks:
            recs = self.secs[k]
            if self.cumulative(k) is None:
                continue
            hist: dict[int, int] = {}
            first: dict[int, int] = {}
            mx = 0.0
            for rec in recs.values():
                merge_into(hist, rec["h"])
                merge_into(first, rec.get("hf", {}))
                mx = max(mx, rec["mx"])
            s = hist_summary(hist, mx)
            # The replies of agents already connected: every reply less the first replies of
            # new connections (the buckets subtract exactly; the maximum is every reply's).
            rest = {i: n - first.get(i, 0) for i, n in hist.items() if n > first.get(i, 0)}
            timeline.append(
                {
                    "t": k,
                    "connected": int(cum(k, "conn")),
                    "handshakes_per_s": int(cum(k, "hs") - cum(k - 1, "hs")),
                    "sent_per_s": int(cum(k, "sent") - cum(k - 1, "sent")),
                    "answered_per_s": int(cum(k, "ans") - cum(k - 1, "ans")),
                    "errors": int(cum(k, "err")),
                    "down": int(sum(r.get("down", 0) for r in self.secs.get(k, {}).values())),
                    "p50_ms": s["p50"],
                    "p99_ms": s["p99"],
                    "first_replies_per_s": sum(first.values()),
                    "p99_first_ms": hist_summary(first, mx)["p99"] if first else None,
                    "p99_connected_ms": hist_summary(rest, mx)["p99"] if rest else None,
                    "max_ms": s["max"],
                    "generator_cpu_percent": round(100 * (cum(k, "cpu") - cum(k - 1, "cpu")), 1),
                    "generator_lag_max_ms": round(
                        1000 * max((r.get("lag", 0.0) for r in recs.values()), default=0.0), 1
                    ),
                }
            )
        all_hist: dict[int, int] = {}
        all_max = 0.0
        for k in ks:
            for rec in self.secs[k].values():
                merge_into(all_hist, rec["h"])
                all_max = max(all_max, rec["mx"])
        cpu_workers = sum(float(d["cpu_s"]) for d in done)
        answered = total("answered")

        def rel(t: float) -> float | None:
            return round(t - t0, 3) if t else None

        return {
            "tool": "wsload",
            "argv": sys.argv,
            "url": f"ws://{self.host}:{self.port}{self.path}",
            "mode": "idle" if a.idle else "heartbeat",
            "agents_target": a.agents,
            "agents_connected": total("connected_at_hold_end"),
            "agents_connected_max": sum(int(d["connected_max"]) for d in done),
            "agents_ready": total("ready"),
            "procs": a.procs,
            "heartbeat_s": a.heartbeat_s,
            "connect": {
                "handshakes": total("handshakes"),
                "first_s": rel(connect_first),
                "last_s": rel(connect_last),
                "duration_s": round(connect_last - connect_first, 3) if firsts else None,
                "handshake_ms": hist_summary(hs_hist, max((d["hs_max"] for d in done), default=0)),
            },
            "messages": {
                "sent": total("sent"),
                "answered": answered,
                "full_states_sent": total("full_states_sent"),
                "heartbeats_sent": total("heartbeats_sent"),
                "goodbyes_sent": total("goodbyes_sent"),
                "busy_skips": total("busy_skips"),
                "full_state_requests": total("full_state_requests"),
                "uid_reassignments": total("uid_reassignments"),
                "unsolicited_replies": total("unsolicited_replies"),
                "lost_in_flight": total("lost_in_flight"),
                "closed_ok": total("closed_ok"),
                "reconnects": total("reconnects"),
            },
            "errors": dict(errors),
            "returns": self.returns(done),
            "latency_ms": {
                "hold": window(hold_from, hold_to)["latency_ms"],
                "all": hist_summary(all_hist, all_max),
            },
            "hold": window(hold_from, hold_to),
            "steady": steady,
            "generator": {
                "cpu_s": round(cpu_workers, 3),
                "cpu_s_by_proc": [d["cpu_s"] for d in done],
                "maxrss_kib_by_proc": [d["maxrss_kib"] for d in done],
                "cpu_us_per_message_all": round(1e6 * cpu_workers / answered, 2)
                if answered
                else None,
                "cpu_us_per_message_steady": steady["generator_cpu_us_per_message"],
            },
            "times": {
                "t0_monotonic": t0,
                "t0_wall": t0_wall,
                "ramp_start_monotonic": t0,
                "ramp_end_monotonic": t0 + a.ramp_s,
                "connect_first_monotonic": connect_first or None,
                "connect_last_monotonic": connect_last or None,
                "hold_start_monotonic": t0 + a.ramp_s,
                "hold_end_monotonic": t0 + a.ramp_s + a.hold_s,
                "ramp_start_wall": t0_wall,
                "ramp_end_wall": t0_wall + a.ramp_s,
                "hold_start_wall": t0_wall + a.ramp_s,
                "hold_end_wall": t0_wall + a.ramp_s + a.hold_s,
            },
            "timeline": timeline,
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return worker_main(argv[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    host, port, path = validate(parser, args)
    parent = Parent(args, host, port, path)
    result = parent.run()
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    if not args.quiet:
        g, s = result["generator"], result["steady"]
        sys.stderr.write(
            f"[wsload] done: connected={result['agents_connected']}/{args.agents} "
            f"answered={result['messages']['answered']} steady_msgs_per_s={s['messages_per_s']} "
            f"steady_p99_ms={s['latency_ms']['p99']} "
            f"generator_us_per_msg={g['cpu_us_per_message_steady']} "
            f"errors={result['errors']}\n"
        )
    return 0 if len(parent.done) == len(parent.procs) else 1


if __name__ == "__main__":
    sys.exit(main())
