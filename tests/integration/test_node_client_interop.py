"""Interop with the official Node client ``@elastic/opamp-client-node`` (HTTP only), unchanged,
driven over loopback by ``tests/node/agent.mjs``.

The client is installed from npm into ``tests/node/`` once per session (``npm ci`` against the
committed lock; skipped when the installed tree already matches it). The driver prints JSON
event lines on stdout and obeys JSON commands on stdin (see the header of ``agent.mjs``).

What is specific to this client (protocol digest, section 5b): ``sequence_num`` starts at 1,
the first message carries an *empty* ``remote_config_status`` when ReportsRemoteConfig is set,
the heartbeat interval is a client option, and it never sends ``agent_disconnect``: going
offline is always the server's heartbeat timeout.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psycopg
import pytest

from opamp_fast.protocol import pb
from tests.helpers.agents import HandlerSpy, wait_for
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
DRIVER = NODE_DIR / "agent.mjs"
CLIENT_PACKAGE = "@elastic/opamp-client-node"
NPM_TIMEOUT_S = 300

REPORT_FULL_STATE = 0x1
# ReportsStatus | AcceptsRemoteConfig | ReportsRemoteConfig | ReportsHeartbeat
NODE_CAPS = 0x1 | 0x2 | 0x1000 | 0x2000
TIMEOUT_S = 2.0  # heartbeat_timeout_s of the server below
TICK_S = 0.1
JSON_CONFIG = {"x.json": (json.dumps({"sampling": 0.5}).encode(), "application/json")}


# -- installation -------------------------------------------------------------------------------
def _installed_version(name: str) -> str | None:
    manifest = NODE_DIR / "node_modules" / name / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _install_is_current() -> bool:
    """Every package of the lock is installed at its locked version (or, without a lock, the
    client at the version pinned in package.json)."""
    lock = NODE_DIR / "package-lock.json"
    if lock.exists():
        packages = json.loads(lock.read_text())["packages"]
        wanted = {
            key.removeprefix("node_modules/"): meta["version"]
            for key, meta in packages.items()
            if key.startswith("node_modules/") and "version" in meta
        }
    else:
        pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
        wanted = {CLIENT_PACKAGE: pinned[CLIENT_PACKAGE]}
    return CLIENT_PACKAGE in wanted and all(
        _installed_version(name) == version for name, version in wanted.items()
    )


def _npm_install(npm: str) -> str | None:
    """Install into tests/node unless the installed tree already matches; the error, if any."""
    if _install_is_current():
        return None
    has_lock = (NODE_DIR / "package-lock.json").exists()
    command = [npm, "ci"] if has_lock else [npm, "install"]
    command += ["--no-audit", "--no-fund", "--loglevel=error"]
    shown = " ".join(command)
    try:
        done = subprocess.run(
            command,
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return f"{shown} timed out after {NPM_TIMEOUT_S}s: {exc.stderr!r}"
    except OSError as exc:
        return f"{shown} could not run: {exc}"
    if done.returncode != 0:
        return (
            f"{shown} failed in {NODE_DIR} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    if not _install_is_current():
        return f"{shown} succeeded but {CLIENT_PACKAGE} is not installed at the locked version"
    return None


@pytest.fixture(scope="session")
def node_client() -> tuple[str, str | None]:
    """``(node path, install error or None)``, installing ``@elastic/opamp-client-node`` into
    ``tests/node`` once per session.

    Fails (never skips) when node or npm is missing, with the command that installs them. An
    npm failure is not raised here (that would make every test an *error*); ``node_agents``
    fails each test with it instead."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        pytest.fail(
            f"Node interop needs node and npm on PATH ({missing} not found): "
            "apt-get install -y nodejs npm (.ci/run does it)"
        )
    return node, _npm_install(npm)


# -- the driver process -------------------------------------------------------------------------
class NodeAgent:
    """One ``agent.mjs`` process: its events (parsed stdout lines), commands over stdin."""

    def __init__(self, process: anyio.abc.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.events: list[dict[str, Any]] = []
        self.eof = anyio.Event()  # stdout closed: every event line has been read
        self.uid = b""

    async def read_events(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.events.append(json.loads(line))
        finally:
            self.eof.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def describe(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        return f"events={self.events[-30:]}\nstderr:\n{stderr}"

    async def wait_event(
        self,
        kind: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        try:
            with anyio.fail_after(timeout):
                while True:
                    for event in self.of(kind):
                        if predicate(event):
                            return event
                    if self.eof.is_set():
                        raise AssertionError(f"driver exited ({self.process.returncode})")
                    await anyio.sleep(0.02)
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"no {kind!r} event: {exc!r}\n{self.describe()}") from exc

    async def shutdown(self, timeout: float = 5.0) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(b'{"cmd": "shutdown"}\n')
        with anyio.fail_after(timeout):
            await self.process.wait()
            await self.eof.wait()
        assert self.process.returncode == 0, self.describe()
        assert self.of("shutdown"), self.describe()


@pytest.fixture
async def node_agents(
    node_client: tuple[str, str | None], start_server: Any, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await node_agents(url, **options)`` starts ``agent.mjs`` and waits for its
    ``started`` event. Torn down before the servers (it depends on ``start_server``); every
    process still running is killed."""
    node, install_error = node_client
    agents: list[NodeAgent] = []
    async with anyio.create_task_group() as nursery:

        async def start(url: str, **options: Any) -> NodeAgent:
            if install_error is not None:
                pytest.fail(install_error, pytrace=False)
            options = {"endpoint": url + "/v1/opamp", **options}
            stderr_path = tmp_path / f"node-agent-{len(agents)}.stderr"
            with stderr_path.open("wb") as stderr:
                process = await anyio.open_process(
                    [node, str(DRIVER), json.dumps(options)],
                    cwd=NODE_DIR,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                )
            agent = NodeAgent(process, stderr_path)
            agents.append(agent)
            nursery.start_soon(agent.read_events)
            started = await agent.wait_event("started", timeout=10)
            agent.uid = bytes.fromhex(started["instance_uid"])
            return agent

        try:
            yield start
        finally:
            for agent in agents:
                if agent.process.returncode is None:
                    agent.process.kill()
                with anyio.move_on_after(5):
                    await agent.process.wait()
                if agent.process.stdin is not None:
                    await agent.process.stdin.aclose()


@pytest.fixture
async def fast_server(start_server: Any, make_settings: Any) -> Any:
    """Heartbeat 1 s and a 2 s liveness timeout: the Node client (1 s heartbeats) stays online,
    and goes offline ~2 s after it stops."""
    return await start_server(
        make_settings(
            heartbeat_interval_s=1,
            heartbeat_timeout_s=TIMEOUT_S,
            heartbeat_timeout_factor=1.0,
            heartbeat_tick_s=TICK_S,
        )
    )


def is_heartbeat(msg: pb.AgentToServer) -> bool:
    return not msg.HasField("agent_description") and not msg.HasField("remote_config_status")


def identifying(record: Any) -> dict[str, str]:
    attrs = record.state.description.identifying_attributes
    return {kv.key: kv.value.string_value for kv in attrs}


# 1 --------------------------------------------------------------------------------------------
async def test_connect_registers_with_description_no_full_state_request(
    fast_server, node_agents
) -> None:
    spy = HandlerSpy.install(fast_server)
    agent = await node_agents(fast_server.url, serviceName="node-svc")
    assert len(agent.uid) == 16
    await agent.wait_event("sent", lambda e: e["seq"] == 3, timeout=10)

    first = spy.requests[0]
    assert first.instance_uid == agent.uid
    assert first.sequence_num == 1  # the Node client starts at 1
    assert first.capabilities == NODE_CAPS
    assert first.HasField("agent_description")
    # ReportsRemoteConfig: the full state carries the status even before any config: empty.
    assert first.HasField("remote_config_status")
    assert first.remote_config_status == pb.RemoteConfigStatus()
    assert [m.sequence_num for m in spy.requests[:3]] == [1, 2, 3]

    reply = spy.responses[0]
    assert reply.instance_uid == agent.uid
    assert reply.capabilities & 0x3 == 0x3  # AcceptsStatus | OffersRemoteConfig
    assert all(r.instance_uid == agent.uid for r in spy.responses)
    assert not any(r.flags & REPORT_FULL_STATE for r in spy.responses)  # seq 1 is not a gap
    for r in spy.responses:
        assert not r.HasField("error_response")
        assert not r.HasField("agent_identification")  # the client would adopt a new uid
        assert not r.HasField("connection_settings")  # no AcceptsOpAMPConnectionSettings
        assert not r.HasField("remote_config")  # nothing assigned
    assert not agent.of("send_failed"), agent.describe()
    assert all(e["flags"] == 0 for e in agent.of("sent"))
    assert agent.of("sent")[0]["server_capabilities"] == reply.capabilities

    record = fast_server.services.registry.get(agent.uid)
    assert record is not None and record.online
    assert identifying(record) == {"service.name": "node-svc"}
    non_identifying = record.state.description.non_identifying_attributes
    assert [(kv.key, kv.value.string_value) for kv in non_identifying] == [
        ("host.name", "node-test-host")
    ]
    assert record.state.capabilities == NODE_CAPS
    assert record.state.sequence_num == spy.requests[-1].sequence_num


# 2 --------------------------------------------------------------------------------------------
async def test_heartbeats_advance_last_seen_without_full_state_or_resend(
    fast_server, node_agents
) -> None:
    spy = HandlerSpy.install(fast_server)
    agent = await node_agents(fast_server.url)
    config_hash = fast_server.services.fleet.assign_remote_config(agent.uid, JSON_CONFIG)
    await agent.wait_event("status_reported", timeout=5)
    record = fast_server.services.registry.get(agent.uid)
    await wait_for(lambda: sum(map(is_heartbeat, spy.requests)) >= 4, timeout=10)
    seen = record.last_seen
    await wait_for(lambda: record.last_seen > seen, timeout=3)
    assert record.online

    heartbeats = [m for m in spy.requests if is_heartbeat(m)]
    assert all(m.capabilities == NODE_CAPS and m.instance_uid == agent.uid for m in heartbeats)
    seqs = [m.sequence_num for m in spy.requests]
    assert seqs == list(range(1, len(seqs) + 1))
    assert not any(r.flags & REPORT_FULL_STATE for r in spy.responses)
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1
    assert [e["hash"] for e in agent.of("remote_config")] == [config_hash.hex()]

    # ~1 s apart (client-side jitter is +/-10 %); measured between consecutive heartbeats.
    beats = [e for e in agent.of("sent") if not e["full_state"] and not e["has_status"]]
    gaps = [(b["time_ms"] - a["time_ms"]) / 1000 for a, b in itertools.pairwise(beats)]
    assert gaps and all(0.8 <= gap <= 1.6 for gap in gaps), gaps


# 3 --------------------------------------------------------------------------------------------
async def test_remote_config_received_applied_and_not_resent(fast_server, node_agents) -> None:
    spy = HandlerSpy.install(fast_server)
    agent = await node_agents(fast_server.url)
    await agent.wait_event("sent", lambda e: e["seq"] == 2, timeout=5)  # polling
    fleet = fast_server.services.fleet
    changed_at = anyio.current_time()
    config_hash = fleet.assign_remote_config(agent.uid, JSON_CONFIG)

    got = await agent.wait_event("remote_config", timeout=5)
    assert anyio.current_time() - changed_at <= 1.1 + 0.5  # next heartbeat (+jitter, RTT)
    assert got["hash"] == config_hash.hex()
    assert got["files"] == {
        "x.json": {"content_type": "application/json", "body": {"sampling": 0.5}}
    }

    record = fast_server.services.registry.get(agent.uid)
    await wait_for(
        lambda: record.state.remote_config_status.last_remote_config_hash == config_hash,
        timeout=5,
    )
    assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    reports = [m for m in spy.requests if m.remote_config_status.last_remote_config_hash]
    assert len(reports) == 1
    assert not reports[0].HasField("agent_description")  # a status message, not a full state
    assert reports[0].remote_config_status.status == pb.RemoteConfigStatuses_APPLIED

    count = len(spy.requests)
    await wait_for(lambda: len(spy.requests) >= count + 3, timeout=10)  # heartbeats follow
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1
    assert len(agent.of("remote_config")) == 1
    assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED

    # A new hash goes out on the next poll and is applied too.
    second = {"x.json": (b'{"sampling": 0.25}', "application/json")}
    new_hash = fleet.assign_remote_config(agent.uid, second)
    got = await agent.wait_event("remote_config", lambda e: e["hash"] == new_hash.hex())
    assert got["files"]["x.json"]["body"] == {"sampling": 0.25}
    await wait_for(
        lambda: record.state.remote_config_status.last_remote_config_hash == new_hash, timeout=5
    )
    assert record.state.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    assert not any(r.flags & REPORT_FULL_STATE for r in spy.responses)
    assert not agent.of("send_failed"), agent.describe()


# 4 --------------------------------------------------------------------------------------------
async def test_shutdown_sends_no_disconnect_offline_by_heartbeat_timeout(
    fast_server, node_agents, database_url
) -> None:
    spy = HandlerSpy.install(fast_server)
    agent = await node_agents(fast_server.url)
    # Stop between exchanges: shutdown() would let an in-flight request finish (undici's
    # graceful close), and the client publishes no diagnostics event for it.
    await agent.wait_event("sent", lambda e: e["seq"] >= 4, timeout=10)
    record = fast_server.services.registry.get(agent.uid)
    assert record.online  # 1 s heartbeats keep it alive against the 2 s timeout

    await agent.shutdown()
    stopped_at = anyio.current_time()
    sent_before_stop = len(spy.requests)
    assert record.online  # no agent_disconnect: the server cannot know yet
    last_exchange = agent.of("sent")[-1]["time_ms"] / 1000  # wall clock, as the client saw it

    await wait_for(lambda: not record.online, timeout=TIMEOUT_S + 3)
    await anyio.sleep(1.5)  # would a late (or disconnect) message still arrive?
    assert len(spy.requests) == sent_before_stop  # silent after shutdown()
    assert not any(m.HasField("agent_disconnect") for m in spy.requests)
    assert record.disconnect_reason == "heartbeat timeout"
    assert abs(record.last_seen - last_exchange) < 0.3
    # Offline one timeout (+ up to a tick) after the last message, which preceded shutdown().
    silence = record.disconnected_at - record.last_seen
    assert TIMEOUT_S - 0.05 <= silence <= TIMEOUT_S + TICK_S + 0.3, silence
    assert anyio.current_time() - stopped_at < TIMEOUT_S + TICK_S + 1.5 + 1.0

    def row() -> Any:
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "SELECT status, disconnect_reason FROM agents WHERE instance_uid = %s",
                (agent.uid,),
            ).fetchone()

    await wait_for(lambda: row() == ("offline", "heartbeat timeout"), timeout=5)


# 5 --------------------------------------------------------------------------------------------
async def test_failed_status_stored_and_not_resent(fast_server, node_agents) -> None:
    spy = HandlerSpy.install(fast_server)
    agent = await node_agents(fast_server.url, configStatus="FAILED")
    config_hash = fast_server.services.fleet.assign_remote_config(agent.uid, JSON_CONFIG)
    await agent.wait_event("status_reported", lambda e: e["hash"] == config_hash.hex())
    record = fast_server.services.registry.get(agent.uid)
    await wait_for(
        lambda: (
            record.state.remote_config_status is not None
            and record.state.remote_config_status.last_remote_config_hash == config_hash
        ),
        timeout=5,
    )
    status = record.state.remote_config_status
    assert status.status == pb.RemoteConfigStatuses_FAILED
    assert status.error_message == "rejected by node driver"
    count = len(spy.requests)
    await wait_for(lambda: len(spy.requests) >= count + 3, timeout=10)
    assert sum(1 for r in spy.responses if r.HasField("remote_config")) == 1  # same hash: no resend
    assert len(agent.of("remote_config")) == 1
    assert record.online
