"""What one WebSocket connect costs inside the server, without sockets (pytest-benchmark).

A connect, as the load generator makes it: the HTTP upgrade request, the agent's first message
(the simulator's full state: a 10-attribute description, health, effective config), then the
socket closes. It is fed to the sans-IO ``OpAMPConnection`` of a ``FleetHandler`` wired as
``services.py`` wires it: the real registry, batch writer (never flushed), event hub, config
service (an empty directory, as in the load runs) and package registry (no offers). Everything
but the syscalls, the event loop and Postgres: the figure to hold against the load run's CPU
per connect.

``subscribed`` adds one event-stream subscriber (every type, every agent), as when a console
is open.

Run: ``python -m pytest benchmarks/bench_connect.py --benchmark-only``; or as a script for a
profile: ``python benchmarks/bench_connect.py --profile 20000``, or the time of each piece:
``python benchmarks/bench_connect.py --breakdown``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import pytest

from opamp_fast import sim as simulator
from opamp_fast.fleet.events import EventHub
from opamp_fast.fleet.handler import FleetHandler
from opamp_fast.fleet.registry import Registry
from opamp_fast.native.wsframe import OP_BINARY, encode_client_frame
from opamp_fast.packages import PackageRegistry, URLSigner
from opamp_fast.packages.store import FilesystemStore
from opamp_fast.protocol import ServerPolicy
from opamp_fast.remote_config.service import ConfigService
from opamp_fast.services import server_policy
from opamp_fast.storage.batch_writer import BatchWriter
from opamp_fast.transport import Limits, OpAMPConnection, TransportStats

CAPS = 0x3907
UPGRADE = (
    b"GET /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1:4320\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # 1000, zero mask key


def full_state(uid: bytes, n: int) -> bytes:
    """The simulator's first message of agent ``n`` (what every load run starts with), as a
    masked frame."""
    payload = b"\x00" + simulator.full_state(n, uid, capabilities=CAPS)
    return encode_client_frame(OP_BINARY, payload, mask=b"\x01\x02\x03\x04")


class Server:
    """The handler and its hooks, wired as ``services.open_services`` wires them."""

    def __init__(self, root: Path, *, subscribed: bool = False) -> None:
        from opamp_fast.settings import Settings

        settings = Settings()
        policy: ServerPolicy = server_policy(settings)
        self.registry = Registry(
            timeout_s=30.0, timeout_factor=2.5, tick_s=1.0, start_mono=time.monotonic()
        )
        self.writer = BatchWriter(None, instance_id="bench")  # type: ignore[arg-type]
        self.events = EventHub(instance_id="bench")
        self.writer.event_outbox = self.events.take_outbox
        self.fleet = FleetHandler(
            registry=self.registry, sink=self.writer, policy=policy, events=self.events
        )
        self.packages = PackageRegistry(
            db=None,  # type: ignore[arg-type]  # no offers: never asked
            store=FilesystemStore(root),
            signer=URLSigner(b"k" * 32),
            registry=self.registry,
            fleet=self.fleet,
            instance_id="bench",
            base_url="http://127.0.0.1:4320",
            url_ttl_s=3600,
            max_bytes=1 << 20,
        )
        configs = ConfigService(None, self.fleet, instance_id="bench")  # type: ignore[arg-type]
        configs.also_assign = self.packages.assign
        self.packages.group_of = configs.deciding_group
        self.fleet.assigner = configs.assign
        self.limits = Limits(handler=self.fleet, stats=TransportStats())
        self.out: list[bytes] = []
        self.subscriber = self.events.subscribe()[0] if subscribed else None

    def connect(self, frame: bytes) -> None:
        conn = OpAMPConnection(self.limits, "127.0.0.1:40000", self.out.append, 1.0)
        conn.receive_data(UPGRADE, 1.0)
        conn.receive_data(frame, 1.0)
        conn.receive_data(CLOSE, 1.0)
        conn.peer_gone(1.0)

    def drain(self) -> None:
        """What the socket, the writer's flush and the stream tasks take away (the writer's
        pending batch is left to grow: 60,000 sessions, as between two flushes of a fast
        ramp)."""
        self.out.clear()
        self.events.take_outbox()
        if self.subscriber is not None:
            self.subscriber.take()

    def close(self) -> None:
        """The notice channel ``PackageRegistry.run`` would have closed (it never ran)."""
        self.packages._notices_in.close()
        self.packages._notices_out.close()


def frames(count: int) -> list[bytes]:
    return [full_state(os.urandom(16), n) for n in range(count)]


@pytest.mark.parametrize("subscribed", [False, True], ids=["no-subscriber", "subscriber"])
def test_connect(benchmark: Any, tmp_path: Path, subscribed: bool) -> None:
    """Upgrade + full state + close of a new agent, through every hook of the server."""
    server = Server(tmp_path, subscribed=subscribed)
    feed = iter(frames(60_000))

    def one() -> None:
        server.connect(next(feed))
        if len(server.out) >= 1_000:  # ~330 connects: within a subscriber's queue
            server.drain()

    try:
        benchmark.pedantic(one, rounds=50, iterations=1000, warmup_rounds=1)
    finally:
        server.close()
    assert server.limits.stats.ws_in >= 50_000
    assert server.registry.online_count == 0  # every one of them closed again
    published = server.events.statistics()
    assert published.delivered_total == (published.published_total if subscribed else 0)


#: What ``--breakdown`` times, by (module or class, attribute): the pieces of a connect.
BREAKDOWN = (
    ("opamp_fast.transport.connection", "parse_head"),
    ("opamp_fast.transport.connection", "websocket_accept"),
    ("opamp_fast.transport.connection.OpAMPConnection", "_upgrade"),
    ("opamp_fast.transport.connection.OpAMPConnection", "_connecting"),
    ("opamp_fast.transport.connection", "decode_agent_to_server"),
    ("opamp_fast.transport.connection.OpAMPConnection", "send"),
    ("opamp_fast.fleet.handler.FleetHandler", "on_message"),
    ("opamp_fast.fleet.handler", "check_bounds"),
    ("opamp_fast.fleet.handler", "process_message"),
    ("opamp_fast.fleet.registry.Registry", "ensure"),
    ("opamp_fast.fleet.registry.Registry", "mark_online"),
    ("opamp_fast.fleet.handler.FleetHandler", "_apply_events"),
    ("opamp_fast.fleet.handler.FleetHandler", "_persist"),
    ("opamp_fast.fleet.handler", "snapshot_of"),
    ("opamp_fast.storage.batch_writer.BatchWriter", "connected"),
    ("opamp_fast.fleet.handler", "announce_connected"),
    ("opamp_fast.fleet.handler.FleetHandler", "on_connection_close"),
    ("opamp_fast.fleet.registry.Registry", "mark_offline"),
)


def breakdown(server: Server, batch: list[bytes]) -> dict[str, float]:
    """Seconds spent in each :data:`BREAKDOWN` piece (inclusive) over ``batch``'s connects,
    with the collector off (a collection would land on whichever piece allocated last)."""
    import gc
    import importlib

    spent: dict[str, float] = {}
    clock = time.perf_counter

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + clock() - started

        return wrapper

    restore = []
    for where, name in BREAKDOWN:
        try:
            owner: Any = importlib.import_module(where)
        except ModuleNotFoundError:
            module, _, cls = where.rpartition(".")
            owner = getattr(importlib.import_module(module), cls)
        original = owner.__dict__[name]
        restore.append((owner, name, original))
        setattr(owner, name, timed(f"{where.rsplit('.', 1)[-1]}.{name}", original))
    gc.collect()
    gc.disable()
    try:
        started = clock()
        for frame in batch:
            server.connect(frame)
        spent["total"] = clock() - started
    finally:
        gc.enable()
        for owner, name, original in restore:
            setattr(owner, name, original)
    return spent


def memory_per_connection(
    server: Server, batch: list[bytes]
) -> tuple[float, list[tuple[str, float]]]:
    """Bytes Python holds per connection left open after its first message (tracemalloc: the
    connection object, frame reader, session, agent record and protocol state, and what the
    writer and the event hub keep for it until their next flush), and the largest files."""
    import gc
    import tracemalloc

    conns = []
    tracemalloc.start()
    gc.collect()
    before = tracemalloc.take_snapshot()
    for frame in batch:
        conn = OpAMPConnection(server.limits, "127.0.0.1:40000", server.out.append, 1.0)
        conn.receive_data(UPGRADE, 1.0)
        conn.receive_data(frame, 1.0)
        conns.append(conn)
        if len(server.out) >= 1_000:
            server.drain()
    server.drain()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert server.registry.online_count == len(batch)
    diff = after.compare_to(before, "filename")
    held = sum(d.size_diff for d in diff) / len(batch)
    by_file = [
        (d.traceback[0].filename.rsplit("/src/", 1)[-1], d.size_diff / len(batch)) for d in diff[:8]
    ]
    return held, by_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile N connects")
    parser.add_argument(
        "--breakdown", action="store_true", help="time each piece of a connect (inclusive)"
    )
    parser.add_argument(
        "--memory", type=int, metavar="N", help="Python bytes held per open connection (N open)"
    )
    parser.add_argument("--time", type=int, metavar="N", default=20_000, help="time N connects")
    parser.add_argument("--subscribed", action="store_true")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        server = Server(Path(root), subscribed=args.subscribed)
        count = args.profile or args.memory or args.time
        batch = frames(count)
        if args.profile:
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                for frame in batch:
                    server.connect(frame)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        elif args.memory:
            held, by_file = memory_per_connection(server, batch)
            print(f"{held:.0f} bytes per open connection ({count} open, tracemalloc); by file:")
            for name, size in by_file:
                print(f"{size:8.0f}  {name}")
        elif args.breakdown:
            spent = breakdown(server, batch)
            print(f"{count} connects, inclusive us per connect (timers add ~0.3 us per call):")
            for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"{seconds / count * 1e6:8.1f}  {label}")
        else:
            started = time.perf_counter()
            for frame in batch:
                server.connect(frame)
            elapsed = time.perf_counter() - started
            print(f"{elapsed / count * 1e6:.1f} us per connect ({count} connects)")
        server.close()


if __name__ == "__main__":
    main()
