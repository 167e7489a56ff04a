"""The opamp-go example agent (v0.17.0, ``internal/examples/agent``) against a live server over
wss: it sends a CSR with a fixed CommonName at start, gets a certificate naming its instance
uid, reconnects with it (mutual TLS then proves the uid), and reports its own metrics only once
they are offered.

The binary is built outside the repository (docs/opamp-go-agent.md says how it was built and
records a run); this test finds it through ``OPAMP_FAST_TEST_OPAMP_GO_AGENT`` (default
``/tmp/opamp-go/bin/opamp-agent``) and skips only when it is absent. Its exporter follows the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT``, not the offered URL (an upstream bug of v0.17.0), so the
environment points it at the test's receiver; the offered URL itself is checked with a WebSocket
agent of our own in test_connection_settings.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from opamp_fast.fleet.registry import AgentRecord
from opamp_fast.protocol import format_instance_uid
from tests.helpers.certs import LocalCA, make_ca
from tests.helpers.config_api import api_client
from tests.helpers.otlp import otlp_receiver

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

AGENT = Path(os.environ.get("OPAMP_FAST_TEST_OPAMP_GO_AGENT", "/tmp/opamp-go/bin/opamp-agent"))
AGENT_TYPE = "opamp-fast-go-example"
#: The example agent exports its own metrics every 5 s once it has an offer.
EXPORT_INTERVAL_S = 5.0

requires_agent = pytest.mark.skipif(
    not (AGENT.is_file() and os.access(AGENT, os.X_OK)),
    reason=f"opamp-go example agent not built at {AGENT} (OPAMP_FAST_TEST_OPAMP_GO_AGENT)",
)


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path / "pki", "agent CA", days=365)


@pytest.fixture
async def tls_server(start_server: Any, make_settings: Any, ca: LocalCA) -> Any:
    server = ca.issue("server", server=True)
    settings = make_settings(
        tls_cert_file=server.cert,
        tls_key_file=server.key,
        tls_client_ca_file=ca.cert,  # the same CA: the certificates it issues prove uids
        agent_ca_cert_file=ca.cert,
        agent_ca_key_file=ca.key_file(),
    )
    return await start_server(settings)


@contextlib.asynccontextmanager
async def go_agent(url: str, ca: LocalCA, otlp_url: str, log: Path) -> AsyncIterator[Process]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(log.parent),
        "OPAMP_SERVER_URL": url.replace("https://", "wss://") + "/v1/opamp",
        "OPAMP_CA_CERT": str(ca.cert),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [str(AGENT), "-t", AGENT_TYPE, "-v", "0.17.0"],
            env=env,
            cwd=log.parent,
            stdout=sink,
            stderr=sink,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with anyio.move_on_after(10, shield=True) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()


def agent_of_type(server: Any) -> AgentRecord | None:
    for record in server.services.registry:
        description = record.state.description
        if description is None:
            continue
        names = {kv.key: kv.value.string_value for kv in description.identifying_attributes}
        if names.get("service.name") == AGENT_TYPE:
            return record  # type: ignore[no-any-return]
    return None


def tail(log: Path) -> str:
    """The end of the agent's log, for a failure message (read only when failing)."""
    return log.read_text(errors="replace")[-3000:]


async def wait_proven(server: Any, process: Process, log: Path) -> AgentRecord:
    """Until the agent is back over mutual TLS with the certificate it was issued."""
    with anyio.fail_after(60):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"agent exited: {tail(log)}")
            record = agent_of_type(server)
            if record is not None and record.online and record.proven:
                return record
            await anyio.sleep(0.1)


@requires_agent
async def test_the_opamp_go_agent_gets_a_certificate_and_reports_own_metrics_once_offered(
    tls_server: Any, ca: LocalCA, tmp_path: Path
) -> None:
    log = tmp_path / "agent" / "agent.log"
    log.parent.mkdir()
    with otlp_receiver() as receiver:
        async with go_agent(tls_server.url, ca, receiver.url, log) as process:
            record = await wait_proven(tls_server, process, log)
            uid, agent_id = record.uid, format_instance_uid(record.uid)
            async with api_client(tls_server, role="admin", verify=ca.client_context()) as api:
                with anyio.fail_after(10):
                    while (await api.get(f"/api/agents/{agent_id}")).status_code != 200:
                        await anyio.sleep(0.1)
                shown = (await api.get(f"/api/agents/{agent_id}/connection-settings")).json()
                certificate = shown["certificate"]
                assert certificate is not None and certificate["origin"] == "csr"
                assert (
                    certificate["serial"]
                    == tls_server.services.connection_settings.serial_of(uid).decode()
                )
                assert shown["metrics"]["status"] == "none"
                # No offer yet: more than one export interval passes without a single POST.
                await anyio.sleep(EXPORT_INTERVAL_S + 1.5)
                assert receiver.count("/v1/metrics") == 0, "metrics before any offer"
                r = await api.put("/api/groups/go", json={"selector": {}})
                assert r.status_code == 200, r.text
                offered = receiver.url + "/v1/metrics"
                body = {"telemetry": {"metrics": {"endpoint": offered}}}
                r = await api.put("/api/groups/go/connection-settings", json=body)
                assert r.status_code == 200, r.text
                with anyio.fail_after(EXPORT_INTERVAL_S * 4):
                    while receiver.count("/v1/metrics") == 0:
                        assert process.returncode is None, tail(log)
                        await anyio.sleep(0.2)
                shown = (await api.get(f"/api/agents/{agent_id}/connection-settings")).json()
                assert shown["metrics"]["endpoint"] == offered
                # v0.17.0 does not report ConnectionSettingsStatus: offered, status not reported.
                assert shown["metrics"]["status"] == "not_reported"
            # The same uid throughout: one CSR, one certificate, and the agent still proven.
            assert agent_of_type(tls_server) is record and record.proven
            stats = tls_server.services.connection_settings.statistics()
            assert stats.issued_total == 1 and not stats.refused_total
