"""thread_cpu: where a server's CPU per heartbeat goes, thread by thread, under a fleet.

Starts ``opamp-fast serve --workers N`` (embedded Postgres in a temporary directory; ``--src``
runs another source tree), ramps ``--agents`` WebSocket agents with ``wsload.py`` heartbeating
every ``--heartbeat-s``, and once the ramp is over reads every thread of the server's own
processes (Postgres excluded) from ``/proc/PID/task/TID``: CPU time and voluntary context
switches over ``--window-s``, divided by the messages the fleet sends in that window (agents /
heartbeat interval x window). Each
process's main thread runs its event loop; its other threads are the writer's and the pool's,
and whatever ``anyio.to_thread`` runs (metrics publishing, for one). ``--scrape-every-s`` reads
``/metrics`` that often meanwhile, as Prometheus would. Loopback only; the server is stopped
with SIGTERM by its PID, wsload ends by itself.

Example: ``python loadtest/thread_cpu.py --workers 2 --scrape-every-s 15``.
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from idle_cpu import server_processes
from procs import free_port, wait_ready

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


Thread = tuple[str, str, str]  # process role, "event loop" or "other threads", the thread's id


def thread_counters(root: int, supervised: bool) -> dict[Thread, tuple[float, int]]:
    """Each thread of the server's processes -> (CPU seconds, voluntary switches) so far;
    ``root`` is the supervisor when ``supervised``, the one worker otherwise."""
    out: dict[Thread, tuple[float, int]] = {}
    for proc in server_processes(root):
        try:
            role = "supervisor" if proc.pid == root and supervised else "worker"
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                task = f"/proc/{proc.pid}/task/{tid}"
                with open(f"{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"{task}/status") as f:
                    status = f.read()
                kind = "event loop" if tid == str(proc.pid) else "other threads"
                out[role, kind, tid] = (
                    (int(fields[11]) + int(fields[12])) / TICKS,
                    int(status.split("voluntary_ctxt_switches:")[1].split()[0]),
                )
        except (OSError, psutil.Error):  # a process or thread that ended meanwhile
            continue
    return out


def window(
    before: dict[Thread, tuple[float, int]], after: dict[Thread, tuple[float, int]]
) -> dict[tuple[str, str], tuple[float, int]]:
    """What each (role, kind) of thread used between the two readings. A thread started in
    between counts from zero; one that ended in between is missing from ``after`` and left
    out (not subtracted)."""
    used: collections.Counter[tuple[str, str]] = collections.Counter()
    woke: collections.Counter[tuple[str, str]] = collections.Counter()
    for (role, kind, tid), (cpu, switches) in after.items():
        cpu0, switches0 = before.get((role, kind, tid), (0.0, 0))
        used[role, kind] += cpu - cpu0
        woke[role, kind] += switches - switches0
    return {key: (used[key], woke[key]) for key in used}


def scrape_every(url: str, every_s: float, stop: threading.Event) -> None:
    """GET ``url`` every ``every_s`` until ``stop`` is set (what a Prometheus scrape does)."""
    while not stop.wait(every_s):
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--ramp-s", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--scrape-every-s", type=float, default=0.0, help="0: nobody scrapes")
    parser.add_argument("--src", default=str(HERE.parent / "src"), help="the server's tree")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opamp-threads-"))
    port = free_port()
    env = {**os.environ, "OPAMP_FAST_API_JWT_SECRET": secrets.token_hex(32), "PYTHONPATH": args.src}
    hb = str(max(1, round(args.heartbeat_s)))
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--backlog", "8192", "--workers", str(args.workers),
             "--log-level", "warning", "--data-dir", str(tmp / "data"),
             "--heartbeat-interval-s", hb, "--heartbeat-timeout-s", "120"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    stop_scraping = threading.Event()
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server, timeout_s=120)
        if args.scrape_every_s > 0:
            scraper = threading.Thread(
                target=scrape_every,
                args=(f"http://127.0.0.1:{port}/metrics", args.scrape_every_s, stop_scraping),
                daemon=True,
            )
            scraper.start()
        hold_s = args.window_s + 15.0
        fleet = subprocess.Popen(
            [sys.executable, str(HERE / "wsload.py"), "--url", f"ws://127.0.0.1:{port}/v1/opamp",
             "--agents", str(args.agents), "--procs", "2", "--ramp-s", str(args.ramp_s),
             "--tick-ms", "5", "--quiet", "--hold-s", str(hold_s), "--heartbeat-s", hb,
             "--out", str(tmp / "wsload.json")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(args.ramp_s + 10.0)  # past the ramp and the first heartbeats of the last
        supervised = args.workers > 1
        before, t0 = thread_counters(server.pid, supervised), time.monotonic()
        time.sleep(args.window_s)
        after, elapsed = thread_counters(server.pid, supervised), time.monotonic() - t0
        messages = args.agents / args.heartbeat_s * elapsed
        scraped = f", /metrics every {args.scrape_every_s:g} s" if args.scrape_every_s else ""
        print(
            f"{args.workers} worker(s), {args.agents} agents every {args.heartbeat_s:g} s{scraped},"
        )
        print(f"{elapsed:.1f} s window, {messages:.0f} messages:")
        for (role, kind), (cpu, switches) in sorted(window(before, after).items()):
            print(
                f"  {role:10} {kind:13} {1e6 * cpu / messages:6.1f} us/msg"
                f"  {switches / messages:.3f} wake-ups/msg"
            )
        fleet.wait(timeout=hold_s + args.ramp_s + 60)
    finally:
        stop_scraping.set()
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
