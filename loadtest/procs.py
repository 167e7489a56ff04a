"""Small process helpers the load scripts share (standard library only: ``failover.py`` runs
in CI, where the ``loadtest`` extra, psutil included, is not installed)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
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
    "Summary", "embedded_postgres", "floor_args", "free_port", "metric_samples", "mint_viewer",
    "wait_ready",
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


def floor_args(description: str, *, port: int, name: str) -> argparse.Namespace:
    """The command line every floor server takes (host, port, backlog, the heartbeat interval
    it offers), refused off loopback; the descriptor limit raised to its hard bound."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--backlog", type=int, default=8192)
    parser.add_argument(
        "--heartbeat-interval-s", type=int, default=0, help="offer this interval (0: none)"
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
