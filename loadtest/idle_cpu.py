"""idle_cpu: what ``opamp-fast serve --workers N`` costs with no agent at all.

Starts the server (embedded Postgres in a temporary directory) for each worker count, waits until
``/readyz`` answers and ``--settle-s`` more, then sums the CPU time of the server's own processes
(the supervisor and its workers; Postgres excluded) over ``--window-s``: the fixed price of each
worker's timers and threads, which a fleet's heartbeats then share. Loopback only; every server
is stopped with SIGTERM by its PID.

Example: ``python loadtest/idle_cpu.py --workers 1,2,4,8``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from procs import free_port, wait_ready

HERE = Path(__file__).resolve().parent


def server_processes(pid: int) -> list[psutil.Process]:
    me = psutil.Process(pid)
    return [me, *(c for c in me.children(recursive=True) if "postgres" not in c.name())]


def measure(workers: int, settle_s: float, window_s: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="opamp-idle-"))
    port = free_port()
    env = {
        **os.environ,
        "OPAMP_FAST_API_JWT_SECRET": secrets.token_hex(32),
        "PYTHONPATH": str(HERE.parent / "src"),
    }
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), "--log-level", "warning",
             "--data-dir", str(tmp / "data")],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, timeout_s=120)
        time.sleep(settle_s)
        procs = server_processes(proc.pid)

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in procs)

        before = cpu()
        time.sleep(window_s)
        used = cpu() - before
        return {"workers": workers, "processes": len(procs), "cpu_ms_per_s": used / window_s * 1e3}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    p.add_argument("--settle-s", type=float, default=10.0)
    p.add_argument("--window-s", type=float, default=30.0)
    a = p.parse_args()
    for n in (int(x) for x in a.workers.split(",")):
        r = measure(n, a.settle_s, a.window_s)
        print(f"workers={n} processes={r['processes']} idle CPU {r['cpu_ms_per_s']:.1f} ms/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
