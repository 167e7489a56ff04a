"""The ``OpAMP-Instance-UID`` request header of plain-HTTP agents: accepted from the official
Python client, checked against the message and the agent's credentials, and honoured by the
haproxy rule of ``deploy/haproxy/haproxy.cfg``, which keeps each agent on one instance so that
what that instance holds for its next poll (a Restart command) reaches it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry._opamp import OpAMPClient

from opamp_fast.auth import agent_token_key, mint_agent_token
from opamp_fast.protocol import format_instance_uid, pb
from tests.conftest import free_port
from tests.helpers.agents import CAPS_PYTHON_CLIENT, HTTPAgent, new_uid
from tests.helpers.config_api import api_client, wait_known

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HEADER = "OpAMP-Instance-UID"
RESTART_CAPS = CAPS_PYTHON_CLIENT | 0x400  # ... | AcceptsRestartCommand
HAPROXY_CFG = Path(__file__).parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
# The rule as deploy/haproxy/haproxy.cfg states it (checked below, so they stay the same).
RULE = ("balance hdr(OpAMP-Instance-UID)", "hash-type consistent")


def header_of(uid: bytes) -> dict[str, str]:
    return {HEADER: str(uuid.UUID(bytes=uid))}


async def test_the_official_python_client_with_the_header_gets_a_restart(server: Any) -> None:
    client = OpAMPClient(
        endpoint=server.url + "/v1/opamp",
        agent_identifying_attributes={"service.name": "py"},
        capabilities=RESTART_CAPS,
    )
    # The client sends no such header itself (0.5b0), but passes the headers it is given.
    uid = client._instance_uid
    client._headers[HEADER] = str(uuid.UUID(bytes=uid))

    def send(data: bytes) -> Any:
        return client.send(data)

    first = await anyio.to_thread.run_sync(send, client.build_full_state_message())
    assert not first.HasField("error_response")
    async with api_client(server) as api:
        await wait_known(api, uid)
        r = await api.post(f"/api/agents/{format_instance_uid(uid)}/restart")
        assert r.status_code == 202 and r.json()["delivery"] == "next_poll", r.text
    reply = await anyio.to_thread.run_sync(send, client.build_heartbeat_message())
    assert reply.command.type == pb.CommandType_Restart


async def test_a_malformed_or_contradicting_header_is_refused(server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        agent = HTTPAgent(http)
        msg = agent.message(agent_description=pb.AgentDescription())
        for bad in ("nope", "", "0" * 31, str(uuid.uuid4()) + "0"):
            r = await agent.post(msg, headers={HEADER: bad})
            assert r.status_code == 400, (bad, r.text)
            assert "OpAMP-Instance-UID must be" in r.text
        # Another agent's uid in the header than in the message: refused, nothing recorded.
        reply = await agent.request(msg, headers=header_of(new_uid()))
        assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
        assert "OpAMP-Instance-UID header names" in reply.error_response.error_message
        assert server.services.registry.get(agent.uid) is None
        # The same uid, in either accepted spelling: served.
        for spelling in (str(uuid.UUID(bytes=agent.uid)).upper(), agent.uid.hex()):
            reply = await agent.request(msg, headers={HEADER: spelling})
            assert not reply.HasField("error_response")
        assert server.services.registry.get(agent.uid) is not None


async def test_credentials_bound_to_another_uid_are_refused_before_the_body(
    start_server: Any, make_settings: Any
) -> None:
    running = await start_server(make_settings(require_agent_identity=True))
    mine = new_uid()
    token = mint_agent_token(
        agent_token_key(running.services.settings),
        instance_uid=str(uuid.UUID(bytes=mine)),
        ttl_s=600,
    )
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        agent = HTTPAgent(http, uid=mine)
        msg = agent.message(agent_description=pb.AgentDescription())
        r = await agent.post(msg, headers={**bearer, **header_of(new_uid())})
        assert r.status_code == 401 and "OpAMP-Instance-UID" in r.text
        reply = await agent.request(msg, headers={**bearer, **header_of(mine)})
        assert not reply.HasField("error_response")


def test_the_deployed_haproxy_config_states_the_rule_and_is_valid() -> None:
    text = HAPROXY_CFG.read_text()
    for line in RULE:
        assert line in text
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False
    )
    # Valid (the compose services it names are only resolved at run time: warnings).
    assert checked.returncode == 0, checked.stderr


@contextlib.contextmanager
def haproxy(ports: list[int], tmp: Path) -> Iterator[str]:
    """deploy/haproxy/haproxy.cfg itself, on loopback (as loadtest/failover.py renders it):
    the URL of its plain-HTTP frontend."""
    loadtest = str(Path(__file__).parents[2] / "loadtest")
    if loadtest not in sys.path:
        sys.path.append(loadtest)
    from failover import render_haproxy

    http_port = free_port()
    path = tmp / "haproxy.cfg"
    path.write_text(render_haproxy(ports, free_port(), 1000, http_port=http_port))
    with open(tmp / "haproxy.log", "wb") as log:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{http_port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_haproxy_keeps_each_agent_on_one_instance_by_the_header(
    start_server: Any, make_settings: Any, tmp_path: Path
) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    three = []
    for name in ("a", "b", "c"):
        running = await start_server(make_settings(instance_id=name))
        with anyio.fail_after(10):
            await running.services.cluster.listening.wait()
        three.append(running)
    a = three[0]
    ports = [int(s.url.rsplit(":", 1)[1]) for s in three]
    with haproxy(ports, tmp_path) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            with anyio.fail_after(10):
                while True:  # until haproxy listens
                    with contextlib.suppress(httpx.TransportError):
                        await http.get("/readyz")
                        break
                    await anyio.sleep(0.05)
            agents = [HTTPAgent(http, caps=RESTART_CAPS) for _ in range(16)]
            for agent in agents:
                for _ in range(4):
                    await agent.request(
                        agent.message(agent_description=pb.AgentDescription()),
                        headers=header_of(agent.uid),
                    )
            held = {
                agent.uid: [s.services.settings.instance_id for s in three if _holds(s, agent.uid)]
                for agent in agents
            }
            assert all(len(where) == 1 for where in held.values()), held
            # The hash spreads them over the instances (16 agents: all on one is 1 in 10^7).
            assert len({where[0] for where in held.values()}) > 1
            # A restart asked through either instance is held where the agent polls, and its
            # next poll, routed there again, carries it.
            for agent in agents[:4]:
                for instance in three:
                    await instance.services.writer.flush()
                async with api_client(a) as api:
                    r = await api.post(f"/api/agents/{format_instance_uid(agent.uid)}/restart")
                    assert r.status_code == 202, r.text
                with anyio.fail_after(5):
                    while True:
                        reply = await agent.request(agent.message(), headers=header_of(agent.uid))
                        if reply.HasField("command"):
                            break
                        await anyio.sleep(0.05)  # a routed restart arrives by notice


def _holds(running: Any, uid: bytes) -> bool:
    record = running.services.registry.get(uid)
    return record is not None and record.online
