"""The reference multi-instance deployment: three instances behind haproxy on one Postgres.

``deploy/compose-cluster.yaml`` is validated with Docker Compose and ``deploy/haproxy/haproxy.cfg``
with haproxy itself; then ``loadtest/failover.py`` runs that haproxy configuration for real on
loopback in front of three server processes, with simulated agents reconnecting through it, and
kills one instance with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opamp_fast.settings import OPTIONS
from tests.helpers.container_tools import run_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "compose-cluster.yaml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
INSTANCES = {"opamp-fast-1", "opamp-fast-2", "opamp-fast-3"}


def haproxy() -> str:
    path = shutil.which("haproxy")
    assert path, "haproxy is required (Debian package 'haproxy'; .ci/run installs it)"
    return path


def test_cluster_compose_is_one_fleet_behind_the_balancer(tmp_path: Path) -> None:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = run_tool(
        "docker-compose", "--file", str(CLUSTER), "--env-file", str(env_file),
        "config", "--format", "json", cwd=CLUSTER.parent, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    assert set(services) == {"postgres", "haproxy", *INSTANCES}
    envs = {name: services[name]["environment"] for name in INSTANCES}
    settings = {opt.env for opt in OPTIONS}
    for name, env_vars in envs.items():
        assert not set(env_vars) - settings, set(env_vars) - settings
        assert env_vars["OPAMP_FAST_INSTANCE_ID"] == name  # distinct, stable ids
        assert services[name]["build"]["context"] == str(ROOT)
        assert "ports" not in services[name]  # reached through the balancer only
    # One database, one JWT secret, one lease for all.
    for key in ("OPAMP_FAST_DATABASE_URL", "OPAMP_FAST_API_JWT_SECRET", "OPAMP_FAST_LEASE_S"):
        assert len({env_vars[key] for env_vars in envs.values()}) == 1, key
    lb = services["haproxy"]
    # 4320: WebSocket agents (TCP); 4321: plain-HTTP agents, routed by OpAMP-Instance-UID.
    assert [(p["target"], p["published"]) for p in lb["ports"]] == [
        (4320, "4320"),
        (4321, "4321"),
    ]
    (mount,) = lb["volumes"]
    assert Path(mount["source"]) == HAPROXY_CFG and mount.get("read_only")
    # The balancer's servers are exactly the instances, on the port they listen on.
    servers = dict(
        line.split()[1:3] for line in HAPROXY_CFG.read_text().splitlines()
        if line.strip().startswith("server ")
    )  # fmt: skip
    assert servers == {name: f"{name}:4320" for name in INSTANCES}


def test_haproxy_accepts_the_configuration() -> None:
    result = subprocess.run(
        [haproxy(), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    # The service names only resolve inside compose; haproxy starts them disabled, no error.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_killing_an_instance_behind_haproxy_loses_nothing(
    postgres_admin_url: str, create_database: Any, tmp_path: Path
) -> None:
    lease_s = 3.0
    out = tmp_path / "failover.json"
    cmd = [
        sys.executable, str(ROOT / "loadtest" / "failover.py"), "--agents", "60",
        "--lease-s", str(lease_s), "--ramp-s", "3", "--duration-s", "40",
        "--database-url", create_database(), "--haproxy", haproxy(), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    # The balancer spread the fleet over the three instances.
    assert set(r["online_before"]) == INSTANCES and min(r["online_before"].values()) > 0
    # The killed instance's agents came back on survivors, and a survivor declared it lost within
    # the lease plus one renewal round and its own wait.
    assert r["victims_back_after_s"] is not None
    assert r["reaped_after_s"] is not None and r["reaped_after_s"] <= 3 * lease_s + 5
    assert r["lost_by"] in INSTANCES - {r["victim"]}
    assert r["fleet_online_after_s"] is not None
    assert r["online_after"].get(r["victim"], 0) == 0
    assert sum(r["online_after"].values()) == 60
    # Nothing lost: one row per session, all closed; the dead one's as "server lost".
    assert r["rows_lost"] == 0 and r["history_rows"] == r["sessions_opened"]
    assert r["rows_left_open"] == 0 and r["online_after_shutdown"] == 0
    assert r["reasons"].get("server lost") == r["victim_agents"]
    survivors = {k: v for k, v in r["instance_exit_codes"].items() if k != r["victim"]}
    assert set(survivors.values()) == {0}
