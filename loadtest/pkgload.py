"""pkgload: package downloads under heartbeat load.

One bounded run, everything on loopback:

1. an embedded Postgres (pgserver) and ``opamp-fast serve`` (filesystem package store in a
   temporary directory) as subprocesses;
2. a ``--size-mib`` package is uploaded through ``POST /api/packages`` and offered
   (``PUT /api/agents/{id}/packages``) to ``--downloaders`` plain-HTTP agents that report
   AcceptsPackages;
3. ``loadtest/wsload.py`` ramps ``--agents`` WebSocket agents heartbeating every
   ``--heartbeat-s`` and holds them for ``--hold-s``;
4. once the ramp is over, every downloader polls (and gets the offer with its signed URL),
   downloads the file at once (all in parallel, streamed, SHA-256 checked) and reports
   Installed; the run records the download window, each download's time and the aggregate
   throughput;
5. the heartbeat p99 comes from wsload's per-second histograms: over the whole hold, and over
   the seconds of the download window.

Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from procs import free_port, wait_ready  # noqa: E402  (sibling script, not a package)

from opamp_fast._proto.opamp.v1 import opamp_pb2 as pb  # noqa: E402

SECRET = "p" * 48
CAPS = 0x3007 | 0x8 | 0x10  # python client's bits + AcceptsPackages + ReportsPackageStatuses


def token() -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "pkgload", "iat": now, "exp": now + 3600}, SECRET, "HS256")


def message(uid: bytes, seq: int, **fields: Any) -> bytes:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=CAPS)
    for key, value in fields.items():
        getattr(msg, key).CopyFrom(value)
    return msg.SerializeToString()


async def poll(client: httpx.AsyncClient, body: bytes) -> pb.ServerToAgent:
    r = await client.post(
        "/v1/opamp", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    r.raise_for_status()
    return pb.ServerToAgent.FromString(r.content)


async def downloader(
    client: httpx.AsyncClient, uid: bytes, name: str, start: asyncio.Event
) -> dict[str, Any]:
    await start.wait()
    began = time.monotonic()
    reply = await poll(client, message(uid, 1))
    offer = reply.packages_available
    available = offer.packages[name]
    sha = hashlib.sha256()
    size = 0
    async with client.stream("GET", available.file.download_url) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw(1024 * 1024):
            sha.update(chunk)
            size += len(chunk)
    ok = sha.digest() == available.file.content_hash
    statuses = pb.PackageStatuses(server_provided_all_packages_hash=offer.all_packages_hash)
    entry = statuses.packages[name]
    entry.name = name
    entry.agent_has_version = available.version
    entry.agent_has_hash = available.hash
    entry.server_offered_version = available.version
    entry.server_offered_hash = available.hash
    status = pb.PackageStatusEnum_Installed if ok else pb.PackageStatusEnum_InstallFailed
    entry.status = status  # type: ignore[assignment]
    await poll(client, message(uid, 2, package_statuses=statuses))
    return {
        "seconds": time.monotonic() - began,
        "bytes": size,
        "sha_ok": ok,
        "ended": time.monotonic(),
    }


async def run_downloads(args: argparse.Namespace, base: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token()}"}
    content = os.urandom(args.size_mib * 1024 * 1024)
    name = "loadpkg"
    limits = httpx.Limits(max_connections=args.downloaders + 10)
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as api:
        r = await api.post(
            "/api/packages",
            data={"name": name, "version": "1.0.0", "sha256": hashlib.sha256(content).hexdigest()},
            files={"file": ("pkg.bin", content, "application/octet-stream")},
        )
        r.raise_for_status()
    del content
    uids = [os.urandom(16) for _ in range(args.downloaders)]
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        desc = pb.AgentDescription()
        kv = desc.identifying_attributes.add()
        kv.key = "service.name"
        kv.value.string_value = "pkgload"
        for uid in uids:
            await poll(client, message(uid, 0, agent_description=desc))
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as api:
            for uid in uids:
                text = uid.hex()
                r = await api.put(
                    f"/api/agents/{text}/packages", json={"packages": [{"name": name}]}
                )
                r.raise_for_status()
        start = asyncio.Event()
        tasks = [asyncio.create_task(downloader(client, uid, name, start)) for uid in uids]
        await asyncio.sleep(args.ramp_s + args.download_after_s)
        began = time.monotonic()
        start.set()
        results = await asyncio.gather(*tasks)
    ended = max(r["ended"] for r in results)
    total = sum(r["bytes"] for r in results)
    window = ended - began
    seconds = sorted(r["seconds"] for r in results)
    return {
        "downloaders": args.downloaders,
        "package_mib": args.size_mib,
        "all_sha256_ok": all(r["sha_ok"] for r in results),
        "bytes_total": total,
        "window_s": round(window, 2),
        "throughput_mib_s": round(total / 2**20 / window, 1),
        "per_download_s": {
            "min": round(seconds[0], 2),
            "p50": round(seconds[len(seconds) // 2], 2),
            "max": round(seconds[-1], 2),
        },
        "_began": began,
        "_ended": ended,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--ramp-s", type=float, default=30.0)
    p.add_argument("--hold-s", type=float, default=60.0)
    p.add_argument("--download-after-s", type=float, default=10.0, help="into the hold")
    p.add_argument("--downloaders", type=int, default=100)
    p.add_argument("--size-mib", type=int, default=50)
    p.add_argument("--out", default="")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pkgload-"))
    import pgserver

    pg = pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_args = [
        sys.executable, "-m", "opamp_fast", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--backlog", "8192", "--database-url", pg.get_uri(), "--log-level", "warning",
        "--heartbeat-interval-s", str(int(args.heartbeat_s)), "--api-jwt-secret", SECRET,
        "--package-store", str(tmp / "packages"), "--data-dir", str(tmp / "data"),
        "--instance-id", "pkgload",
    ]  # fmt: skip
    log = open(tmp / "server.log", "wb")
    server = subprocess.Popen(server_args, stdout=log, stderr=subprocess.STDOUT)
    load: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(base + "/readyz", server)
        load_out = tmp / "wsload.json"
        load = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "wsload.py"),
                "--url",
                f"ws://127.0.0.1:{port}/v1/opamp",
                "--agents",
                str(args.agents),
                "--procs",
                str(args.procs),
                "--ramp-s",
                str(args.ramp_s),
                "--hold-s",
                str(args.hold_s),
                "--heartbeat-s",
                str(args.heartbeat_s),
                "--out",
                str(load_out),
            ],
            stderr=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        downloads = asyncio.run(run_downloads(args, base))
        load.communicate(timeout=args.ramp_s + args.hold_s + 120)
        steady = json.loads(load_out.read_text())
        progress = [(e["t"], e["p99_ms"]) for e in steady.get("timeline", ())]
        # wsload's t counts from its own start, a fraction of a second after t0.
        lo = downloads.pop("_began") - t0
        hi = downloads.pop("_ended") - t0
        during = [p99 for t, p99 in progress if lo - 1 <= t <= hi + 1]
        result = {
            "command": " ".join(sys.argv),
            "downloads": downloads,
            "heartbeats": {
                "agents": args.agents,
                "heartbeat_s": args.heartbeat_s,
                "hold_steady": steady.get("steady", {}).get("latency_ms"),
                "per_second_p99_ms_during_downloads": during,
                "max_per_second_p99_ms_during_downloads": max(during) if during else None,
                "errors": steady.get("errors"),
            },
        }
    finally:
        for proc in (load, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()
        pg.cleanup()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
