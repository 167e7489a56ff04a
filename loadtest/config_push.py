"""Measure "a config pushed to N simulated WebSocket agents reaches them all".

Starts nothing itself: point it at a running server (``opamp-fast serve``) that N agents of
``opamp-fast simulate --ws-fraction 1`` hold connections to (every simulated agent carries the
identifying attribute ``service.namespace=shop``). It waits until N agents are online, creates
a config, assigns it with one group selecting ``service.namespace: shop``, and reports:

* ``api_ms``: the PUT /api/groups call (it returns once this instance pushed to its agents);
* ``all_applied_s``: until ``GET /api/configs/<name>/status`` counts N agents APPLIED (the agents
  applied it, reported it, and the batch writer stored it: includes one flush interval).

Usage: python loadtest/config_push.py --url http://127.0.0.1:4320 --token "$(opamp-fast token
--subject bench --role operator)" --agents 10000
"""

from __future__ import annotations

import argparse
import json
import time

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:4320")
    parser.add_argument("--token", required=True)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    api = httpx.Client(
        base_url=args.url, headers={"Authorization": f"Bearer {args.token}"}, timeout=60
    )
    deadline = time.monotonic() + args.timeout_s
    while api.get("/api/agents/status/summary").json()["online"] < args.agents:
        if time.monotonic() > deadline:
            raise SystemExit("the agents did not all come online")
        time.sleep(0.5)
    name = f"push-{int(time.time())}"
    body = {"name": name, "files": {"collector.yaml": {"body": f"# {name}\nreceivers: {{}}\n"}}}
    api.post("/api/configs", json=body).raise_for_status()
    started = time.perf_counter()
    api.put(
        "/api/groups/bench-shop",
        json={"selector": {"service.namespace": "shop"}, "config": name},
    ).raise_for_status()
    api_ms = (time.perf_counter() - started) * 1000
    applied = 0
    while applied < args.agents:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {applied} of {args.agents} agents applied it")
        time.sleep(0.05)
        applied = api.get(f"/api/configs/{name}/status").json()["totals"]["applied"]
    total_s = time.perf_counter() - started
    print(json.dumps({"agents": args.agents, "api_ms": round(api_ms, 1),
                      "all_applied_s": round(total_s, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
