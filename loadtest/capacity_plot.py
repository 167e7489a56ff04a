"""capacity_plot: RSS, CPU and round-trip tail against fleet size, from ``compare.py`` runs.

Reads ``loadtest/results/compare-<name>.json`` for each ``--runs`` name (one opamp-fast target
each, at growing ``--agents``), prints one table row per run and draws ``--out`` (PNG, three
panels: server RSS with the fleet connected; server and Postgres CPU over the heartbeat hold;
p50 / p99 / p99.9 of the heartbeat round trip). Needs matplotlib (the ``loadtest`` extra).

Example: ``python loadtest/capacity_plot.py --runs cap-25k,cap-50k,cap-100k,cap-150k,cap-200k
--out docs/scale/capacity.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def point(name: str) -> dict[str, Any]:
    """One run's figures: the first round's opamp-fast target."""
    run = json.loads((RESULTS / f"compare-{name}.json").read_text())
    target = run["rounds"][0][0]
    connect, beat = target["connect"], target["heartbeat"]
    rate = beat.get("messages_per_s") or 0.0
    rows = target.get("rows", {})
    return {
        "agents": run["settings"]["agents"],
        "idle_connected": connect["agents_connected"],
        "beating_connected": beat["agents_connected"],
        "workers": _workers(target["cmd"]),
        "rss_mib": connect["rss_after_mb"],
        "rss_per_agent_kib": connect["rss_per_agent_kib"],
        "cpu_per_connect_ms": connect["cpu_per_connect_ms"],
        "messages_per_s": rate,
        "server_cores": (beat.get("server_cpu_percent") or 0.0) / 100,
        "db_cores": (beat.get("db_cpu_per_heartbeat_us") or 0.0) * rate / 1e6,
        "cpu_per_heartbeat_us": beat.get("cpu_per_heartbeat_us"),
        "p50_ms": beat.get("p50_ms"),
        "p99_ms": beat.get("p99_ms"),
        "p999_ms": beat.get("p999_ms"),
        "summary_exact": (beat.get("summary") or {}).get("exact"),
        "exit_code": target.get("exit_code"),
        "rows_lost": rows.get("rows_lost"),
        "rows_left_open": rows.get("rows_left_open"),
    }


def _held(p: dict[str, Any]) -> bool:
    """A saturated run has no steady hold to measure (no heartbeat figures)."""
    return p["p99_ms"] is not None


def _workers(cmd: list[str]) -> int:
    """The worker count the server ran with (``auto`` resolved as the server resolves it)."""
    if "--workers" not in cmd:
        return 1
    asked = cmd[cmd.index("--workers") + 1]
    if asked != "auto":
        return int(asked)
    from opamp_fast.settings import Settings
    from opamp_fast.supervisor import resolve_workers

    overrides: dict[str, Any] = {"workers": "auto"}
    if "--max-connections" in cmd:
        overrides["max_connections"] = int(cmd[cmd.index("--max-connections") + 1])
    return resolve_workers(Settings(**overrides))


def table(points: list[dict[str, Any]]) -> str:
    head = (
        "| agents | workers | connected idle / heartbeating | RSS | RSS / agent | CPU / connect "
        "| heartbeats/s | server CPU "
        "| Postgres CPU | CPU / heartbeat | p50 / p99 / p99.9 | summary exact "
        "| exit, rows lost / open |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for p in points:
        lines.append(
            f"| {p['agents']:,} | {p['workers']} "
            f"| {p['idle_connected']:,} / {p['beating_connected']:,} | {p['rss_mib']:,.0f} MiB "
            f"| {p['rss_per_agent_kib']} KiB | {p['cpu_per_connect_ms']} ms "
            + (
                f"| {p['messages_per_s']:,.0f} | {p['server_cores']:.2f} cores "
                f"| {p['db_cores']:.2f} cores | {p['cpu_per_heartbeat_us']} us "
                f"| {p['p50_ms']} / {p['p99_ms']} / {p['p999_ms']} ms | {p['summary_exact']} "
                if _held(p)
                else "| saturated: no steady hold | - | - | - | - | - "
            )
            + f"| {p['exit_code']}, {p['rows_lost']} / {p['rows_left_open']} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rss, cpu, lat) = plt.subplots(1, 3, figsize=(15, 4.2))
    rss.plot([p["idle_connected"] / 1000 for p in points], [p["rss_mib"] for p in points], "o-")
    rss.set(title="server RSS, fleet connected", xlabel="agents (thousands)", ylabel="MiB")
    held = [p for p in points if _held(p)]
    x = [p["beating_connected"] / 1000 for p in held]
    cpu.plot(x, [p["server_cores"] for p in held], "o-", label="server (all workers)")
    cpu.plot(x, [p["db_cores"] for p in held], "s-", label="Postgres")
    cpu.set(title="CPU over the heartbeat hold", xlabel="agents (thousands)", ylabel="cores")
    cpu.legend()
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        lat.plot(x, [p[key] for p in held], "o-", label=label)
    lat.axhline(50, color="grey", linestyle=":", label="goal: p99 < 50 ms")
    lat.set(title="heartbeat round trip", xlabel="agents (thousands)", ylabel="ms", yscale="log")
    lat.legend()
    for ax in (rss, cpu, lat):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="comma-separated compare run names")
    parser.add_argument("--out", type=Path, help="PNG to write")
    args = parser.parse_args()
    points = sorted((point(n) for n in args.runs.split(",")), key=lambda p: p["agents"])
    print(table(points))
    if args.out:
        plot(points, args.out)


if __name__ == "__main__":
    main()
