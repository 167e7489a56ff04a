"""Small process helpers the load scripts share (standard library only: ``failover.py`` runs
in CI, where the ``loadtest`` extra, psutil included, is not installed)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import resource
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "CpuShares", "Summary", "embedded_postgres", "floor_args", "free_port", "metric_samples",
    "mint_viewer", "wait_ready",
]  # fmt: skip


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_samples(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """A server's ``/metrics`` at ``url`` as ``{series: value}``, the series with its labels as
    exposed (``name{label="..."}``); comments and unparsable lines left out. Raises OSError
    when the server does not answer."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            out[series] = float(value)
        except ValueError:
            continue
    return out


def wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    name: str = "server",
    timeout_s: float = 60.0,
    hint: str = "",
) -> None:
    """Poll ``url`` until it answers 200; exit (SystemExit) if ``proc`` ends first or the time
    runs out. ``hint`` is appended to the message (e.g. where the log is)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}{hint}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} not ready after {timeout_s:g} s{hint}")


def floor_args(
    description: str, *, port: int, name: str, processes: bool = False
) -> argparse.Namespace:
    """The command line every floor server takes (host, port, backlog, the heartbeat interval
    it offers; ``--processes`` where the floor can share its port), refused off loopback; the
    descriptor limit raised to its hard bound."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--backlog", type=int, default=8192)
    parser.add_argument(
        "--heartbeat-interval-s", type=int, default=0, help="offer this interval (0: none)"
    )
    if processes:
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            choices=range(1, 65),
            metavar="N",
            help="N processes sharing the port (SO_REUSEPORT), as --workers N does",
        )
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"the {name} listens on loopback only")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return args


def embedded_postgres(pgdata: Path, *, stock: bool = False) -> Any:
    """The run's Postgres, outside the server's processes (its CPU is counted on its own): the
    server's embedded one with the settings it gives it, or ``stock`` (pgserver's defaults)."""
    if stock:
        import pgserver

        return pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    from opamp_fast.storage.embedded import start_embedded

    return start_embedded(pgdata)


def mint_viewer(secret: str) -> str:
    """A REST token with the viewer role for a server started with ``--api-jwt-secret``."""
    from opamp_fast.auth import load_key_material, mint_token
    from opamp_fast.settings import Settings

    keys = load_key_material(Settings(api_jwt_secret=secret))
    return mint_token(keys, subject="loadtest", ttl_s=7200, role="viewer")


class Summary(threading.Thread):
    """Polls the REST summary once a second: (monotonic time, online, offline) samples."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/api/agents/status/summary"
        self.token = token
        self.samples: list[tuple[float, int | None, int | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        while not self.stop.wait(1.0):
            online = offline = None
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(request, timeout=5) as r:
                    body = json.loads(r.read())
                online, offline = int(body["online"]), int(body["offline"])
            self.samples.append((time.monotonic(), online, offline))


class CpuShares(threading.Thread):
    """Every second, the CPU used by each named process tree and by Postgres (any process
    named ``postgres``, wherever it was started from), read from ``/proc``: where the cores went
    during a run whose processes all share them. ``roots`` maps a name to a callable giving the
    tree's root pid (None while there is none; a restarted server is a new root)."""

    def __init__(self, roots: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.samples: list[tuple[float, dict[str, float]]] = []  # (monotonic, {name: cores})
        self.stop = threading.Event()
        self._tick = 1.0 / float(os.sysconf("SC_CLK_TCK"))

    def _stats(self) -> dict[int, tuple[int, str, float]]:
        """{pid: (ppid, comm, cpu seconds)} of every process readable now."""
        out: dict[int, tuple[int, str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = Path(f"/proc/{entry.name}/stat").read_text()
                comm = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw[raw.rindex(")") + 2 :].split()
                cpu = (int(fields[11]) + int(fields[12])) * self._tick
                out[int(entry.name)] = (int(fields[1]), comm, cpu)
        return out

    def _by_group(self) -> tuple[dict[int, str], dict[int, tuple[int, str, float]]]:
        """{pid: group} of the processes in a group, and the stats they were read from."""
        stats = self._stats()
        group: dict[int, str] = {}
        roots = {pid: name for name, get in self.roots.items() if (pid := get()) is not None}
        for pid, (_, comm, _) in stats.items():
            walk, seen = pid, 0
            while walk and walk not in roots and seen < 64:
                walk, seen = stats.get(walk, (0, "", 0.0))[0], seen + 1
            if walk in roots:
                group[pid] = roots[walk]
            elif comm == "postgres":
                group[pid] = "postgres"
        return group, stats

    def run(self) -> None:
        before: dict[int, float] = {}
        t_before = time.monotonic()
        while not self.stop.wait(1.0):
            group, stats = self._by_group()
            now = time.monotonic()
            shares: dict[str, float] = {}
            for pid, name in group.items():
                # a process born since the last sample counts from zero: its whole CPU is new
                shares[name] = shares.get(name, 0.0) + stats[pid][2] - before.get(pid, 0.0)
            before = {pid: stats[pid][2] for pid in group}
            dt = now - t_before
            t_before = now
            self.samples.append((now, {k: round(v / dt, 3) for k, v in shares.items()}))
