"""The command line of the simulator: ``opamp-fast simulate`` and ``python loadtest/simulate.py``
share these flags, this mapping onto :class:`SimConfig` and this entry point."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from .config import MAX_AGENTS, MAX_DURATION_S, SimConfig, SimulatorError, parse_source_addrs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``opamp-fast simulate`` (also ``python loadtest/simulate.py``)."""
    defaults = SimConfig()
    add = parser.add_argument
    add("--url", default=defaults.url, help="server OpAMP URL, loopback only [%(default)s]")
    add("--agents", type=int, default=defaults.agents, help=f"fleet size (max {MAX_AGENTS})")
    add("--duration-s", type=float, required=True, help=f"run time (max {MAX_DURATION_S:.0f})")
    add("--ramp-s", type=float, default=defaults.ramp_s, help="spread agent starts over this")
    add("--ws-fraction", type=float, default=defaults.ws_fraction, help="share of WS agents")
    add(
        "--heartbeat-s",
        type=float,
        default=defaults.heartbeat_s,
        help="heartbeat interval when the server offers none [%(default)s]",
    )
    add(
        "--override-heartbeat",
        action="store_true",
        help="use --heartbeat-s even when the server offers an interval",
    )
    add(
        "--no-spread",
        dest="spread_heartbeats",
        action="store_false",
        help="first heartbeat one full interval after connect (default: uniformly spread)",
    )
    add(
        "--capabilities",
        type=lambda s: int(s, 0),
        default=defaults.capabilities,
        help=f"agent capabilities bitmask [0x{defaults.capabilities:x}]",
    )
    add("--source-addrs", default="", help="loopback source addresses, e.g. 127.0.0.2-127.0.0.20")
    add("--server-pid", type=int, default=None, help="sample this process's RSS and CPU")
    add("--storm-at-s", type=float, default=None, help="drop all WS connections at T, reconnect")
    add("--churn-per-min", type=float, default=0.0, help="share of WS agents reconnecting a minute")
    add(
        "--auth-token",
        default=os.environ.get("OPAMP_FAST_AGENT_AUTH_TOKEN"),
        help="bearer token for the OpAMP endpoint [env OPAMP_FAST_AGENT_AUTH_TOKEN]",
    )
    add("--response-timeout-s", type=float, default=defaults.response_timeout_s)
    add("--connect-timeout-s", type=float, default=defaults.connect_timeout_s)
    add("--backoff-initial-s", type=float, default=defaults.backoff_initial_s)
    add("--backoff-max-s", type=float, default=defaults.backoff_max_s)
    add(
        "--close-timeout-s",
        type=float,
        default=defaults.close_timeout_s,
        help="bound on the goodbye + close handshake at the end [%(default)s]",
    )
    add("--seed", type=int, default=defaults.seed, help="agent ids and jitter")
    add("--quiet", action="store_true", help="no progress lines on stderr")
    add("--out", default=None, help="write the JSON summary here instead of stdout")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Every flag is named after the :class:`SimConfig` field it sets; four are not taken as
    given (the ramp fits in the run, addresses are parsed, an empty token is none, --quiet)."""
    names = (field.name for field in fields(SimConfig) if field.name != "progress")
    given = {name: getattr(args, name) for name in names}
    return SimConfig(
        **{
            **given,
            "ramp_s": min(args.ramp_s, args.duration_s),
            "source_addrs": parse_source_addrs(args.source_addrs),
            "auth_token": args.auth_token or None,
            "progress": not args.quiet,
        }
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run a simulation from parsed flags: 0 on success, 2 for a refused configuration."""
    import trio  # the simulator's imports, only when it runs

    from .fleet import run_simulation

    try:
        config = config_from_args(args)
        _quiet_gc()
        summary = trio.run(run_simulation, config)
    except SimulatorError as exc:
        sys.stderr.write(f"opamp-fast simulate: error: {exc}\n")
        return 2
    text = json.dumps(summary, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


def _quiet_gc() -> None:
    """Keep the cyclic GC from pausing the whole fleet (process entry points only).

    With 10k+ agents the simulator holds hundreds of thousands of tracked objects (sockets,
    wsproto state, tasks); a full collection walks all of them and stalls every agent at once,
    which would show up as server latency. Start-up objects are frozen and the thresholds raised
    so full collections become rare; the garbage the agents make is mostly acyclic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="opamp-fast simulate", description="Simulate a fleet of OpAMP agents (loopback only)."
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
