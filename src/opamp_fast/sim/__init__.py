"""The agent simulator behind ``opamp-fast simulate``: tens of thousands of OpAMP agents from one
trio process, against a running server (load tests, demos). Not imported by the server.

Why it exists: the product's scale bars (``docs/performance.md``) are measured against agents that
behave like real ones, not against a tight request loop. Each simulated agent

* connects over WebSocket or plain HTTP (``ws_fraction``), from one of several loopback source
  addresses (``source_addrs``: one address has only ~28k ephemeral ports);
* sends its full state first (an ``AgentDescription`` with the attributes a Collector reports,
  health, effective config), then heartbeats at the interval the server offers in
  ``connection_settings.opamp.heartbeat_interval_seconds`` (agents with capability 0x100), or at
  ``heartbeat_s``;
* honours ``ReportFullState``, applies a pushed or polled remote config and reports it APPLIED,
  adopts a new instance uid when the server assigns one;
* reconnects with exponential backoff and full jitter after a failure or a server close;
* ends gracefully: ``agent_disconnect``, then a WebSocket close.

Why it is built this way (lean, because the simulator shares two cores with the server): one trio
task per agent and nothing else (no per-agent nursery, no timer task); raw streams with the
sans-IO ``wsproto`` and ``h11``; latencies in fixed log buckets (bounded memory whatever the
message count, at most 2 % high on percentiles); loopback targets only.

The modules, one concern each, each importing only those listed before it:

* ``config``: what a run simulates (:class:`SimConfig`) and the checks that keep it bounded and
  on loopback;
* ``measure``: latency histograms, the counters the agent tasks share, the server's RSS and CPU;
* ``net``: what ends a session, and the socket handling both transports share;
* ``agent``: one agent's identity, protocol state, messages and reactions to the server;
* ``run``: the run's shared state and the decisions drawn from its random generator;
* ``ws_session`` and ``http_session``: one WebSocket session, one plain-HTTP connection;
* ``report``: the per-second progress line and timeline, the JSON summary;
* ``fleet``: the ramp, each agent's reconnect loop, the run from start to goodbye;
* ``options``: the command-line flags and entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for the type checker; imported lazily below
    from .agent import full_state
    from .config import (
        DEFAULT_CAPABILITIES,
        MAX_AGENTS,
        MAX_DURATION_S,
        SimConfig,
        SimulatorError,
        parse_source_addrs,
    )
    from .fleet import raise_fd_limit, run_simulation
    from .measure import LatencyHistogram
    from .options import add_arguments, config_from_args, main, run_from_args

#: Where each name of the package lives. They are imported on first use (PEP 562), so that the
#: command line can add the ``simulate`` flags (``options``) without importing trio and the
#: simulator into every ``opamp-fast`` process, the server's included.
_EXPORTS = {
    "full_state": "agent",
    "DEFAULT_CAPABILITIES": "config",
    "MAX_AGENTS": "config",
    "MAX_DURATION_S": "config",
    "SimConfig": "config",
    "SimulatorError": "config",
    "parse_source_addrs": "config",
    "raise_fd_limit": "fleet",
    "run_simulation": "fleet",
    "LatencyHistogram": "measure",
    "add_arguments": "options",
    "config_from_args": "options",
    "main": "options",
    "run_from_args": "options",
}

__all__ = [
    "DEFAULT_CAPABILITIES",
    "MAX_AGENTS",
    "MAX_DURATION_S",
    "LatencyHistogram",
    "SimConfig",
    "SimulatorError",
    "add_arguments",
    "config_from_args",
    "full_state",
    "main",
    "parse_source_addrs",
    "raise_fd_limit",
    "run_from_args",
    "run_simulation",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
