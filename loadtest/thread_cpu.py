"""thread_cpu: where a server's CPU per heartbeat goes, thread by thread, under a fleet.

Starts ``opamp-fast serve --workers N`` (embedded Postgres in a temporary directory; ``--src``
runs another source tree), ramps ``--agents`` WebSocket agents with ``wsload.py`` heartbeating
every ``--heartbeat-s``, and once the ramp is over reads every thread of the server's own
processes, and of its Postgres apart, from ``/proc/PID/task/TID``: user and system CPU time,
wake-ups, preemptions and the time spent waiting for a core over ``--window-s``, divided by the
messages the fleet sends in that window (agents / heartbeat interval x window). Each
process's main thread runs its event loop; its other threads are the writer's and the pool's,
and whatever ``anyio.to_thread`` runs (metrics publishing, for one). ``--scrape-every-s`` reads
``/metrics`` that often meanwhile, as Prometheus would. ``--floor`` measures the uvloop floor in
N processes (``uvloop_floor.py --processes N``) instead, the same way.

``--py-spy-s S`` then samples every serving process with ``py-spy record --native`` for S more
seconds (after the counting window, which the sampling would disturb) and prints, per message,
where the event loops spent their CPU: the functions with the most samples of their own, and
what share went to the kernel calls the loop makes (``epoll_wait``, reads, writes). The raw
stacks stay in the run's directory for a flame graph.

Loopback only; the server is stopped with SIGTERM by its PID, wsload ends by itself.

Example: ``python loadtest/thread_cpu.py --workers 2 --scrape-every-s 15``;
``python loadtest/thread_cpu.py --workers 2 --floor --py-spy-s 20``.
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import shutil
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
#: Per thread: user and system CPU seconds, voluntary switches (wake-ups: it slept and was
#: woken), involuntary ones (preempted while it could run), seconds it waited for a core.
COUNTERS = ("user", "system", "wake-ups", "preempted", "waited for a core")


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """The embedded Postgres of a server run with ``--data-dir data_dir`` (its postmaster is
    detached, nobody's child but init's) and the postmaster's children."""
    for proc in psutil.process_iter(["cmdline"]):
        command = proc.info["cmdline"] or []
        if command and command[0].endswith("/postgres") and str(data_dir) in command:
            return [proc, *proc.children()]
    return []


def thread_counters(
    root: int, supervised: bool, postgres: list[psutil.Process]
) -> dict[Thread, tuple[float, ...]]:
    """Each thread of the server's processes, and each of ``postgres`` (role "postgres"),
    -> its ``COUNTERS`` so far; ``root`` is the supervisor when ``supervised``, the one worker
    otherwise."""
    out: dict[Thread, tuple[float, ...]] = {}
    ours = server_processes(root)
    for proc in ours + postgres:
        try:
            role = "supervisor" if proc.pid == root and supervised else "worker"
            role = "postgres" if proc in postgres else role
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                task = f"/proc/{proc.pid}/task/{tid}"
                with open(f"{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"{task}/status") as f:
                    status = dict(line.split(":\t", 1) for line in f.read().splitlines())
                with open(f"{task}/schedstat") as f:
                    run_delay_ns = int(f.read().split()[1])
                kind = "event loop" if tid == str(proc.pid) else "other threads"
                kind = "processes" if role == "postgres" else kind
                out[role, kind, tid] = (
                    int(fields[11]) / TICKS,
                    int(fields[12]) / TICKS,
                    int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]),
                    run_delay_ns / 1e9,
                )
        except (OSError, psutil.Error):  # a process or thread that ended meanwhile
            continue
    return out


def window(
    before: dict[Thread, tuple[float, ...]], after: dict[Thread, tuple[float, ...]]
) -> dict[tuple[str, str], list[float]]:
    """What each (role, kind) of thread used between the two readings. A thread started in
    between counts from zero; one that ended in between is missing from ``after`` and left
    out (not subtracted)."""
    used: dict[tuple[str, str], list[float]] = {}
    for (role, kind, tid), counters in after.items():
        start = before.get((role, kind, tid), (0.0,) * len(COUNTERS))
        total = used.setdefault((role, kind), [0.0] * len(COUNTERS))
        for i, (now, then) in enumerate(zip(counters, start, strict=True)):
            total[i] += now - then
    return used


def scrape_every(url: str, every_s: float, stop: threading.Event) -> None:
    """GET ``url`` every ``every_s`` until ``stop`` is set (what a Prometheus scrape does)."""
    while not stop.wait(every_s):
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()


def sample(pids: list[int], seconds: float, rate: int, out_dir: Path) -> list[Path]:
    """``py-spy record --native`` of each process at once for ``seconds``; the raw stacks'
    files (one line per distinct stack: frames joined by ``;``, then its sample count)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    outs = [out_dir / f"py-spy-{pid}.txt" for pid in pids]
    options = ["--native", "--format", "raw", f"--rate={rate}", f"--duration={round(seconds)}"]
    samplers = [
        subprocess.Popen(
            [py_spy, "record", *options, "--pid", str(pid), "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(pids, outs, strict=True)
    ]
    for sampler in samplers:
        sampler.wait(timeout=seconds + 60)
    return [out for out in outs if out.exists()]


def _function(frame: str) -> str:
    """``name (file.py:123)`` -> ``name (file.py)``: lines of one function count together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def profile(files: list[Path], per_sample_us: float, top: int = 25) -> None:
    """Print the event loops' samples per message: the functions with the most samples of their
    own, and (inclusive) the functions that most samples pass through. Samples in
    ``epoll_wait`` are counted apart: py-spy cannot tell an idle loop from one in the kernel's
    wake-up path, so they are neither. Stacks that start in ``threading``'s bootstrap are other
    threads' and are left out."""
    own: collections.Counter[str] = collections.Counter()
    through: collections.Counter[str] = collections.Counter()
    polling = 0
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            frames = [_function(frame) for frame in stack.split(";")]
            count = int(count_text)
            if any(frame.endswith("_bootstrap (threading.py)") for frame in frames):
                continue
            if frames[-1].startswith(("epoll_wait ", "epoll_pwait ")):
                polling += count
                continue
            own[frames[-1]] += count
            for frame in set(frames):
                through[frame] += count
    running = sum(own.values())
    print(
        f"py-spy, event loops: {running * per_sample_us:.1f} us/msg outside epoll_wait,"
        f" {polling * per_sample_us:.1f} in it"
    )
    for title, counter in (("own", own), ("inclusive", through)):
        print(f"  {title} samples outside epoll_wait:")
        for function, count in counter.most_common(top):
            print(f"    {count * per_sample_us:6.2f} us/msg  {function}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--ramp-s", type=float, default=30.0)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--scrape-every-s", type=float, default=0.0, help="0: nobody scrapes")
    parser.add_argument("--src", default=str(HERE.parent / "src"), help="the server's tree")
    parser.add_argument(
        "--floor", action="store_true", help="measure uvloop_floor.py --processes N instead"
    )
    parser.add_argument("--py-spy-s", type=float, default=0.0, help="then sample this long")
    parser.add_argument("--py-spy-rate", type=int, default=100, help="samples a second")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="opamp-threads-"))
    port = free_port()
    env = {**os.environ, "OPAMP_FAST_API_JWT_SECRET": secrets.token_hex(32), "PYTHONPATH": args.src}
    hb = str(max(1, round(args.heartbeat_s)))
    if args.floor:
        command = [sys.executable, str(HERE / "uvloop_floor.py"), "--processes", str(args.workers),
                   "--heartbeat-interval-s", hb]  # fmt: skip
    else:
        command = [sys.executable, "-m", "opamp_fast", "serve", "--workers", str(args.workers),
                   "--log-level", "warning", "--data-dir", str(tmp / "data"),
                   "--heartbeat-interval-s", hb, "--heartbeat-timeout-s", "120"]  # fmt: skip
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--backlog", "8192"],
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
        hold_s = args.window_s + args.py_spy_s + 15.0
        fleet = subprocess.Popen(
            [sys.executable, str(HERE / "wsload.py"), "--url", f"ws://127.0.0.1:{port}/v1/opamp",
             "--agents", str(args.agents), "--procs", "2", "--ramp-s", str(args.ramp_s),
             "--tick-ms", "5", "--quiet", "--hold-s", str(hold_s), "--heartbeat-s", hb,
             "--out", str(tmp / "wsload.json")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(args.ramp_s + 10.0)  # past the ramp and the first heartbeats of the last
        supervised = args.workers > 1 and not args.floor  # the floor's first process serves
        postgres = [] if args.floor else postgres_processes(tmp / "data")
        before, t0 = thread_counters(server.pid, supervised, postgres), time.monotonic()
        time.sleep(args.window_s)
        after = thread_counters(server.pid, supervised, postgres)
        elapsed = time.monotonic() - t0
        messages = args.agents / args.heartbeat_s * elapsed
        scraped = f", /metrics every {args.scrape_every_s:g} s" if args.scrape_every_s else ""
        what = "floor process(es)" if args.floor else "worker(s)"
        print(f"{args.workers} {what}, {args.agents} agents every {args.heartbeat_s:g} s{scraped},")
        print(f"{elapsed:.1f} s window, {messages:.0f} messages:")
        for (role, kind), (user, system, woke, preempted, waited) in sorted(
            window(before, after).items()
        ):
            print(
                f"  {role:10} {kind:13} {1e6 * (user + system) / messages:6.1f} us/msg"
                f" (user {1e6 * user / messages:.1f}, system {1e6 * system / messages:.1f}),"
                f" {woke / messages:.3f} wake-ups and {preempted / messages:.3f} preemptions"
                f"/msg, {1e6 * waited / messages:.1f} us/msg waiting for a core"
            )
        if args.py_spy_s > 0:
            serving = [
                proc.pid
                for proc in server_processes(server.pid)
                if not (supervised and proc.pid == server.pid)
            ]
            raw = sample(serving, args.py_spy_s, args.py_spy_rate, tmp)
            per_message = args.agents / args.heartbeat_s * args.py_spy_s
            profile(raw, 1e6 / args.py_spy_rate / per_message)
            print(f"raw stacks: {', '.join(map(str, raw))}")
        fleet.wait(timeout=hold_s + args.ramp_s + 60)
    finally:
        stop_scraping.set()
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
