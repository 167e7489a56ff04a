"""Hostile peers against a server that is busy with real agents: what do the agents feel?

Starts Postgres (embedded) and ``opamp-fast serve``, ramps ``--agents`` WebSocket agents with
``wsload.py`` (heartbeat every ``--heartbeat-s``), then runs each attack in its own
window, with a quiet window before each as the baseline:

==================  =========================================================================
no_read             WebSocket clients (SO_RCVBUF 4096) that send heartbeats and never read,
                    until their socket blocks, then close
connect_close       ``--flood`` TCP connects, each closed at once (the CLOSE-WAIT exhaustion)
slow_head           sockets sending one byte of a request head per second
idle_tcp            sockets that connect and never send
huge_frame          upgraded sockets announcing a 64 MiB frame, then nothing
tiny_fragments      upgraded sockets sending a message as 1-byte continuation frames
big_message         AgentToServer messages of ~43 MB (200,000 attributes)
gzip_bomb           HTTP POSTs whose gzip body inflates far past the message limit
rest_slow_head      keep-alive sockets that ask ``/healthz`` once, then send a second request
                    head at 1 byte/s (what used to belong to the REST server, unbounded)
rest_slow_body      REST requests whose JSON body arrives at 1 byte/s
rest_slow_upload    package uploads (multipart) trickling at 1 byte/s
rest_huge_head      sockets that ask ``/healthz`` once, then send a 64 MiB request head
silent_upgrades     600 WebSockets that upgrade and never send, reopened as they are closed
partial_messages    24 WebSockets each sending 60 MiB of a 64 MiB message, then waiting
sse_no_read         200 event-stream subscribers (viewer token) that never read
pipelined_posts     sockets sending ``/healthz`` then 600 pipelined OpAMP POSTs in one send
==================  =========================================================================

For each window: the agents' per-second p99 (worst second and median second, from wsload's
timeline), answered heartbeats per second, errors, ``/healthz`` as a prober sees it (a new
connection every 0.2 s: answered share and p99), the server's RSS and open fds at the end.
At the end the server's ``/metrics`` counters for timeouts and refusals. Loopback only, bounded
in time; every process it starts is stopped by its pid. Prints JSON (``--out`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from procs import free_port, metric_samples, wait_ready  # noqa: E402  (sibling script, not a package)

from opamp_fast.native.wsframe import (  # noqa: E402
    OP_BINARY,
    OP_CONTINUATION,
    encode_client_frame,
)
from opamp_fast.protocol import anyvalue_pb, pb  # noqa: E402

UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(msg: pb.AgentToServer, **kw: Any) -> bytes:
    payload = b"\x00" + msg.SerializeToString()
    return encode_client_frame(OP_BINARY, payload, mask=os.urandom(4), **kw)


def upgraded(port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(UPGRADE)
    head = s.recv(4096)
    if not head.startswith(b"HTTP/1.1 101"):
        s.close()
        raise ConnectionError(head[:60])
    return s


# -- attacks: each returns a short note of what it did ---------------------------------------
def no_read(port: int, window_s: float) -> str:
    sent_total, clients = 0, 10

    def one() -> None:
        nonlocal sent_total
        with contextlib.suppress(OSError), upgraded(port, rcvbuf=4096) as s:
            s.settimeout(2.0)
            uid = os.urandom(16)
            deadline = time.monotonic() + window_s
            seq = 0
            while time.monotonic() < deadline:
                s.sendall(frame(pb.AgentToServer(instance_uid=uid, sequence_num=seq)))
                seq += 1
                sent_total += 1

    run_threads(one, clients)
    return f"{clients} clients sent {sent_total} heartbeats without reading, then closed"


def connect_close(port: int, window_s: float, flood: int = 20500) -> str:
    done = 0
    deadline = time.monotonic() + window_s
    while done < flood and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        done += 1
    return f"{done} connect+close"


def hold_sockets(
    port: int, window_s: float, count: int, drip: bytes | None, first: bytes = b""
) -> int:
    """``count`` sockets that send ``first`` (and read its answer), then one piece of
    ``drip`` per second each (nothing if None) until ``window_s`` passes."""
    socks = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            if first:
                s.sendall(first)
                if first.startswith(b"GET"):
                    s.recv(4096)
    deadline = time.monotonic() + window_s
    i = 0
    while time.monotonic() < deadline:
        if drip is not None:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(drip[i % len(drip) : i % len(drip) + 1])
            i += 1
        time.sleep(1.0)
    for s in socks:
        s.close()
    return len(socks)


def slow_head(port: int, window_s: float) -> str:
    n = hold_sockets(port, window_s, 500, UPGRADE)
    return f"{n} sockets sending a request head at 1 byte/s"


def idle_tcp(port: int, window_s: float) -> str:
    n = hold_sockets(port, window_s, 5000, None)
    return f"{n} idle sockets"


def huge_frame(port: int, window_s: float) -> str:
    socks = []
    header = bytes([0x82, 0xFF]) + struct.pack("!Q", 64 << 20) + os.urandom(4)
    for _ in range(200):
        with contextlib.suppress(OSError):
            s = upgraded(port)
            s.sendall(header)
            socks.append(s)
    time.sleep(window_s)
    for s in socks:
        s.close()
    return f"{len(socks)} sockets announced 64 MiB frames and sent nothing"


def tiny_fragments(port: int, window_s: float) -> str:
    sent = 0

    def one() -> None:
        nonlocal sent
        with contextlib.suppress(OSError), upgraded(port) as s:
            s.sendall(encode_client_frame(OP_BINARY, b"\x00", mask=os.urandom(4), fin=False))
            piece = encode_client_frame(OP_CONTINUATION, b"\x0a", mask=b"\0\0\0\0", fin=False)
            chunk = piece * 10_000
            for _ in range(40):  # 400,000 fragments, 2.8 MB
                s.sendall(chunk)
                sent += 10_000

    run_threads(one, 20)
    time.sleep(max(0.0, window_s - 5))
    return f"20 clients, {sent} one-byte fragments written before the server closed them"


def big_message(port: int, window_s: float) -> str:
    attrs = [
        anyvalue_pb.KeyValue(key=f"k{i}", value=anyvalue_pb.AnyValue(string_value="v" * 200))
        for i in range(200_000)
    ]
    msg = pb.AgentToServer(
        instance_uid=os.urandom(16),
        agent_description=pb.AgentDescription(non_identifying_attributes=attrs),
    )
    data = frame(msg)
    sent = 0
    deadline = time.monotonic() + window_s
    while sent < 4 and time.monotonic() < deadline:
        with contextlib.suppress(OSError), upgraded(port) as s:
            s.sendall(data)
            s.settimeout(10)
            s.recv(65536)
            sent += 1
    return f"{sent} messages of {len(data) / 1e6:.1f} MB"


def gzip_bomb(port: int, window_s: float) -> str:
    body = gzip.compress(b"\0" * (200 << 20), compresslevel=9)
    codes: dict[int, int] = {}
    for _ in range(20):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/opamp", data=body, method="POST",
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                code = r.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        except OSError:
            code = 0
        codes[code] = codes.get(code, 0) + 1
    return f"20 POSTs of {len(body) / 1e3:.0f} kB inflating to 200 MiB: status {codes}"


def rest_slow_head(port: int, window_s: float) -> str:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    n = hold_sockets(port, window_s, 500, UPGRADE, first=first)
    return f"{n} keep-alive sockets sending a second request head at 1 byte/s"


def rest_slow_body(port: int, window_s: float) -> str:
    first = (
        b"PUT /api/groups/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ) % TOKEN["operator"].encode()
    n = hold_sockets(port, window_s, 500, b" ", first=first)
    return f"{n} REST requests whose body arrives at 1 byte/s"


def rest_slow_upload(port: int, window_s: float) -> str:
    first = (
        b"POST /api/packages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    ) % TOKEN["operator"].encode()
    n = hold_sockets(port, window_s, 200, b"x", first=first)
    return f"{n} package uploads trickling at 1 byte/s"


def rest_huge_head(port: int, window_s: float) -> str:
    refused_after: list[int] = []

    def one() -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: ")
            sent = 0
            try:
                while sent < 64 << 20:
                    s.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass
            refused_after.append(sent)

    run_threads(one, 20)
    most = max(refused_after, default=0)
    return f"{len(refused_after)} 64 MiB heads after a first request: cut off by {most} bytes"


def silent_upgrades(port: int, window_s: float) -> str:
    opened = refused = 0
    socks: list[socket.socket] = []
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        socks = [s for s in socks if _still_open(s)]
        while len(socks) < 600 and time.monotonic() < deadline:
            try:
                socks.append(upgraded(port))
                opened += 1
            except OSError:
                refused += 1
                break
        time.sleep(0.5)
    for s in socks:
        s.close()
    return f"{opened} silent upgrades opened (reopened as evicted), {refused} refused"


def _still_open(s: socket.socket) -> bool:
    """Whether the server still holds ``s`` open: what it sent and the attacker never read is
    drained first, since an end of stream (or a reset) waits behind it."""
    s.setblocking(False)
    try:
        while chunk := s.recv(1 << 16):
            del chunk
    except BlockingIOError:
        return True
    except OSError:
        pass  # reset: gone
    s.close()
    return False


def partial_messages(port: int, window_s: float) -> str:
    header = bytes([0x82, 0xFF]) + struct.pack("!Q", 64 << 20) + os.urandom(4)
    chunk = b"\0" * (1 << 20)
    closed = 0

    def one() -> None:
        nonlocal closed
        with contextlib.suppress(OSError), upgraded(port) as s:
            s.sendall(header)
            try:
                for _ in range(60):
                    s.sendall(chunk)
                s.settimeout(window_s)
                s.recv(4096)
            except OSError:
                pass
            closed += 1

    run_threads(one, 24)
    return f"24 WebSockets sent 60 MiB of a 64 MiB message each; {closed} ended by the server"


def sse_no_read(port: int, window_s: float) -> str:
    request = (
        b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n\r\n"
        % TOKEN["viewer"].encode()
    )
    socks = []
    for _ in range(200):
        with contextlib.suppress(OSError):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            socks.append(s)
    time.sleep(window_s)
    still = sum(_still_open(s) for s in socks)
    for s in socks:
        s.close()
    return f"{len(socks)} event-stream subscribers that never read; {still} still open at the end"


def pipelined_posts(port: int, window_s: float) -> str:
    body = pb.AgentToServer(instance_uid=os.urandom(16)).SerializeToString()
    post = (
        b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answered = 0

    def one() -> None:
        nonlocal answered
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(first + post * 600)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            data = b""
            while chunk := s.recv(1 << 16):
                data += chunk
            answered += data.count(b"HTTP/1.1 200") - 1

    run_threads(one, 10)
    return f"10 sockets x 600 pipelined POSTs after a probe: {answered} answered (budget: 200 each)"


ATTACKS: dict[str, Callable[[int, float], str]] = {
    "no_read": no_read,
    "connect_close": connect_close,
    "slow_head": slow_head,
    "idle_tcp": idle_tcp,
    "huge_frame": huge_frame,
    "tiny_fragments": tiny_fragments,
    "big_message": big_message,
    "gzip_bomb": gzip_bomb,
    "rest_slow_head": rest_slow_head,
    "rest_slow_body": rest_slow_body,
    "rest_slow_upload": rest_slow_upload,
    "rest_huge_head": rest_huge_head,
    "silent_upgrades": silent_upgrades,
    "partial_messages": partial_messages,
    "sse_no_read": sse_no_read,
    "pipelined_posts": pipelined_posts,
}
#: Bearer tokens by role, minted at start for the attacks that need one.
TOKEN: dict[str, str] = {}


def run_threads(fn: Callable[[], None], n: int) -> None:
    threads = [threading.Thread(target=fn) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


# -- the run ---------------------------------------------------------------------------------


def window_stats(timeline: list[dict[str, Any]], t0: float, a: float, b: float) -> dict[str, Any]:
    secs = [s for s in timeline if a <= t0 + s["t"] and t0 + s["t"] + 1 <= b]
    p99 = [s["p99_ms"] for s in secs if s["p99_ms"] is not None]
    return {
        "seconds": len(secs),
        "p99_ms_worst_second": max(p99, default=None),
        "p99_ms_median_second": round(statistics.median(p99), 2) if p99 else None,
        "max_ms": max((s["max_ms"] or 0 for s in secs), default=None),
        "answered_per_s": round(statistics.fmean(s["answered_per_s"] for s in secs), 1)
        if secs
        else None,
    }


class Prober(threading.Thread):
    """``GET /healthz`` on a new connection every 0.2 s: what a load balancer's probe sees."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, bool, float]] = []  # (when, answered 200, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/healthz"
        while not self.stop.wait(0.2):
            t = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            self.samples.append((t, ok, time.monotonic() - t))

    def window(self, a: float, b: float) -> dict[str, Any]:
        got = [(ok, dt) for t, ok, dt in self.samples if a <= t < b]
        times = sorted(dt for ok, dt in got if ok)
        return {
            "probes": len(got),
            "answered": sum(ok for ok, _ in got),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 1) if times else None,
        }


def mint_tokens(secret: str) -> None:
    from opamp_fast.auth import load_key_material, mint_token
    from opamp_fast.settings import Settings

    keys = load_key_material(Settings(api_jwt_secret=secret))
    for role in ("viewer", "operator"):
        TOKEN[role] = mint_token(keys, subject=f"attacker-{role}", ttl_s=3600, role=role)


def metrics_of(port: int) -> dict[str, float]:
    wanted = ("opamp_fast_connection_timeouts_total", "opamp_fast_rejected_connections_total",
              "opamp_fast_admission_shed_total", "opamp_fast_tcp_refused_total",
              "opamp_fast_tcp_evicted_total", "opamp_fast_protocol_errors_total",
              "opamp_fast_upgrades_evicted_total", "opamp_fast_buffer_shed_total")  # fmt: skip
    samples = metric_samples(f"http://127.0.0.1:{port}/metrics")
    return {name: v for name, v in samples.items() if name.startswith(wanted) and v}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--ramp-s", type=float, default=30.0)
    p.add_argument("--window-s", type=float, default=15.0)
    p.add_argument("--quiet-s", type=float, default=10.0)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    names = args.attacks.split(",")
    unknown = set(names) - set(ATTACKS)
    if unknown:
        p.error(f"unknown attacks: {sorted(unknown)}")
    hold_s = len(names) * (args.window_s + args.quiet_s) + 60  # room for slow attacks
    tmp = Path(tempfile.mkdtemp(prefix="opamp-attacks-"))
    procs: list[subprocess.Popen[bytes]] = []
    import pgserver

    pg = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    secret = os.urandom(24).hex()
    mint_tokens(secret)
    prober = None
    try:
        port = free_port()
        with open(tmp / "server.log", "wb") as log:
            server = subprocess.Popen([
                sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--database-url", pg.get_uri(), "--log-level", "warning",
                "--heartbeat-interval-s", str(round(args.heartbeat_s)), "--backlog", "8192",
            ], stdout=log, stderr=subprocess.STDOUT,
               env={**os.environ, "OPAMP_FAST_API_JWT_SECRET": secret})  # fmt: skip
        procs.append(server)
        wait_ready(f"http://127.0.0.1:{port}/readyz", server)
        prober = Prober(port)
        prober.start()
        ps = psutil.Process(server.pid)
        load_out = tmp / "wsload.json"
        with open(tmp / "wsload.log", "wb") as log:
            gen = subprocess.Popen([
                sys.executable, str(HERE / "wsload.py"), "--url", f"ws://127.0.0.1:{port}/v1/opamp",
                "--agents", str(args.agents), "--procs", str(args.procs),
                "--ramp-s", str(args.ramp_s), "--hold-s", str(hold_s),
                "--heartbeat-s", str(args.heartbeat_s), "--out", str(load_out), "--quiet",
            ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(gen)
        time.sleep(args.ramp_s + 5)
        windows = []
        for name in names:
            q0 = time.monotonic()
            time.sleep(args.quiet_s)
            a0 = time.monotonic()
            note = ATTACKS[name](port, args.window_s)
            a1 = max(time.monotonic(), a0 + args.window_s)
            time.sleep(max(0.0, a0 + args.window_s - time.monotonic()))
            windows.append({
                "attack": name, "note": note, "quiet": (q0, a0), "attack_window": (a0, a1),
                "attack_s": round(a1 - a0, 1), "server_rss_mb": round(ps.memory_info().rss / 2**20),
                "server_fds": ps.num_fds(),
            })  # fmt: skip
            print(f"[attacks] {name}: {note}", file=sys.stderr)
        metrics = metrics_of(port)
        gen.wait(hold_s + 300)
        load = json.loads(load_out.read_text())
        t0 = load["times"]["t0_monotonic"]
        timeline = load["timeline"]
        for w in windows:
            quiet, attack = w.pop("quiet"), w.pop("attack_window")
            w["baseline"] = window_stats(timeline, t0, *quiet)
            w["under_attack"] = window_stats(timeline, t0, *attack)
            w["baseline"]["healthz"] = prober.window(*quiet)
            w["under_attack"]["healthz"] = prober.window(*attack)
        server.terminate()
        server.wait(60)
        result = {
            "agents": args.agents, "heartbeat_s": args.heartbeat_s,
            "agents_connected": load["agents_connected"], "wsload_errors": load["errors"],
            "server_exit": server.returncode, "windows": windows, "metrics": metrics,
            "loadavg_end": os.getloadavg(),
        }  # fmt: skip
    finally:
        if prober is not None:
            prober.stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
