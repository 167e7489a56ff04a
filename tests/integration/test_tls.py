"""TLS on the shared port: wss:// and https:// for agents, https:// for operators, and client
certificates for agents when a client CA is configured. Certificates are made at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry._opamp import OpAMPClient
from opentelemetry._opamp.transport.exceptions import OpAMPException

from opamp_fast.errors import ConfigError
from opamp_fast.server import serve
from tests.helpers.agents import WSAgent, new_uid
from tests.helpers.backends import anyio_backend  # noqa: F401 - both backends
from tests.helpers.certs import LocalCA, make_ca
from tests.helpers.wsclient import ConnectionRejected, open_ws

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path / "pki")


@pytest.fixture
async def tls_server(start_server: Any, make_settings: Any, ca: LocalCA) -> Any:
    server = ca.issue("server", server=True)
    return await start_server(make_settings(tls_cert_file=server.cert, tls_key_file=server.key))


def wss(url: str) -> str:
    return url.replace("https://", "wss://") + "/v1/opamp"


def python_client(url: str, ca: LocalCA, **kw: Any) -> OpAMPClient:
    return OpAMPClient(
        endpoint=url + "/v1/opamp",
        timeout_millis=3000,
        agent_identifying_attributes={"service.name": "tls-agent"},
        tls_certificate=str(ca.cert),
        **kw,
    )


async def test_wss_agent_and_https_probe(tls_server: Any, ca: LocalCA) -> None:
    assert tls_server.url.startswith("https://")
    async with open_ws(wss(tls_server.url), ssl_context=ca.client_context()) as ws:
        agent = WSAgent(ws, new_uid())
        first = await agent.full_state("over-tls")
        assert first.instance_uid == agent.uid and first.capabilities & 0x1
        assert (await agent.heartbeat()).instance_uid == agent.uid
        assert tls_server.services.registry.get(agent.uid).online
    async with httpx.AsyncClient(base_url=tls_server.url, verify=ca.client_context()) as http:
        assert (await http.get("/readyz")).json() == {"status": "ready"}


async def test_official_python_client_over_https(tls_server: Any, ca: LocalCA) -> None:
    client = python_client(tls_server.url, ca)
    reply = await anyio.to_thread.run_sync(client.send, client.build_full_state_message())
    assert reply.instance_uid == client._instance_uid
    assert tls_server.services.registry.get(client._instance_uid).online


async def test_plain_client_on_a_tls_port_gets_nowhere(tls_server: Any, ca: LocalCA) -> None:
    plain = tls_server.url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get("/healthz")
    # ...and the server is unharmed.
    async with httpx.AsyncClient(base_url=tls_server.url, verify=ca.client_context()) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_client_certificates_required_for_agents(
    start_server: Any, make_settings: Any, ca: LocalCA, tmp_path: Path
) -> None:
    server_cert = ca.issue("server", server=True)
    agent_cert = ca.issue("agent-1", server=False)
    running = await start_server(
        make_settings(
            tls_cert_file=server_cert.cert,
            tls_key_file=server_cert.key,
            tls_client_ca_file=ca.cert,
        )
    )
    # No certificate: the upgrade and the POST are refused with 401; nothing is registered.
    with pytest.raises(ConnectionRejected) as info:
        async with open_ws(wss(running.url), ssl_context=ca.client_context()):
            pass
    assert info.value.status_code == 401
    anonymous = python_client(running.url, ca)
    with pytest.raises(OpAMPException, match="401"):
        await anyio.to_thread.run_sync(anonymous.send, anonymous.build_full_state_message())
    assert len(running.services.registry) == 0
    # A certificate from this CA: served, on both transports.
    async with open_ws(wss(running.url), ssl_context=ca.client_context(agent_cert)) as ws:
        agent = WSAgent(ws, new_uid())
        assert (await agent.full_state()).instance_uid == agent.uid
    holder = python_client(
        running.url, ca, tls_client_certificate=str(agent_cert.cert),
        tls_client_key=str(agent_cert.key),
    )  # fmt: skip
    reply = await anyio.to_thread.run_sync(holder.send, holder.build_full_state_message())
    assert reply.instance_uid == holder._instance_uid
    # A certificate from another CA fails the TLS handshake.
    stranger = make_ca(tmp_path / "other", "another CA").issue("intruder", server=False)
    with pytest.raises((ConnectionRejected, OSError, anyio.BrokenResourceError)):
        async with open_ws(wss(running.url), ssl_context=ca.client_context(stranger)) as ws:
            await WSAgent(ws, new_uid()).full_state()
    # Probes and the API need no client certificate.
    async with httpx.AsyncClient(base_url=running.url, verify=ca.client_context()) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_unreadable_certificate_is_one_clear_error(
    make_settings: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    settings = make_settings(tls_cert_file=missing, tls_key_file=missing)
    with pytest.raises(ConfigError, match="tls_cert_file"):
        await serve(settings)
