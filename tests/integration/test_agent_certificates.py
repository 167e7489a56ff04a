"""Client certificates from agents' CSRs, and rotations, against a live server over real TLS:
CSRs made at test time, the issued certificate then used for a mutual-TLS connection that
proves the agent's uid; bad requests refused; a server that never saw the agent re-delivers
the stored certificate instead of issuing another."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from opamp_fast.protocol import format_instance_uid, pb
from tests.helpers.agents import HTTPAgent, WSAgent, description, new_uid
from tests.helpers.certs import Issued, LocalCA, make_ca
from tests.helpers.config_api import api_client, wait_known
from tests.helpers.wsclient import open_ws

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ACCEPTS_OPAMP = 0x100
CAPS = 0x3007 | ACCEPTS_OPAMP
BAD_REQUEST = pb.ServerErrorResponseType_BadRequest
ACCEPTS_CONNECTION_SETTINGS_REQUEST = 0x40


def make_csr(key: Any, cn: str = "OpAMP Example Client") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def request_of(csr: bytes) -> pb.ConnectionSettingsRequest:
    request = pb.ConnectionSettingsRequest()
    request.opamp.certificate_request.csr = csr
    return request


def wss(url: str) -> str:
    return url.replace("https://", "wss://") + "/v1/opamp"


def key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def save_pair(directory: Path, name: str, cert: bytes, key: bytes) -> Issued:
    (directory / f"{name}.crt").write_bytes(cert)
    (directory / f"{name}.key").write_bytes(key)
    return Issued(directory / f"{name}.crt", directory / f"{name}.key")


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path / "pki", "agent CA", days=365)


@pytest.fixture
def ca_settings(make_settings: Any, ca: LocalCA) -> Any:
    server = ca.issue("server", server=True)

    def settings(**extra: Any) -> Any:
        return make_settings(
            tls_cert_file=server.cert,
            tls_key_file=server.key,
            tls_client_ca_file=ca.cert,  # the same CA: its certificates prove agents' uids
            agent_ca_cert_file=ca.cert,
            agent_ca_key_file=ca.key_file(),
            agent_cert_ttl_days=7,
            **extra,
        )

    return settings


@pytest.fixture
async def ca_server(start_server: Any, ca_settings: Any) -> Any:
    return await start_server(ca_settings())


async def certificate_for(server: Any, ca: LocalCA, uid: bytes, csr: bytes) -> pb.TLSCertificate:
    """Connect without a client certificate, send a CSR, return the certificate pushed back."""
    async with open_ws(wss(server.url), ssl_context=ca.client_context()) as ws:
        agent = WSAgent(ws, uid, caps=CAPS)
        message = agent.message(agent_description=description("csr"))
        message.connection_settings_request.CopyFrom(request_of(csr))
        first = await agent.request(message)
        assert first.capabilities & ACCEPTS_CONNECTION_SETTINGS_REQUEST
        pushed = await agent.receive(timeout=30)  # signed in a worker thread, then pushed
        assert pushed.connection_settings.opamp.heartbeat_interval_seconds == 30
        return pushed.connection_settings.opamp.certificate


async def metric(server: Any, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.url, verify=False) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def wait_status(admin: httpx.AsyncClient, agent_id: str, status: str) -> None:
    with anyio.fail_after(10):
        while (await admin.get(f"/api/agents/{agent_id}")).json()["status"] != status:
            await anyio.sleep(0.05)


async def test_a_csr_is_signed_and_the_certificate_proves_the_uid(
    ca_server: Any, ca: LocalCA, tmp_path: Path
) -> None:
    uid = new_uid()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = await certificate_for(ca_server, ca, uid, make_csr(key))
    cert = x509.load_pem_x509_certificate(issued.cert)
    text = format_instance_uid(uid)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == text
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert issued.ca_cert == ca.cert.read_bytes() and not issued.private_key
    pair = save_pair(tmp_path, "agent", issued.cert, key_pem(key))
    async with open_ws(wss(ca_server.url), ssl_context=ca.client_context(pair)) as ws:
        agent = WSAgent(ws, uid, caps=CAPS)
        reply = await agent.full_state("csr")
        assert ca_server.services.registry.get(uid).proven  # mutual TLS named the uid
        # The certificate is not offered again (agents reconnect on every offer carrying one).
        assert not reply.connection_settings.opamp.HasField("certificate")
        impostor = WSAgent(ws, new_uid(), caps=CAPS)  # that connection speaks for no other uid
        assert (await impostor.full_state("x")).error_response.type == BAD_REQUEST
    async with api_client(ca_server, verify=ca.client_context()) as api:
        await wait_known(api, uid)
        shown = (await api.get(f"/api/agents/{text}")).json()["connection_settings"]
        certificate = shown["certificate"]
        assert certificate["serial"] == format(cert.serial_number, "x")
        assert certificate["origin"] == "csr" and certificate["issued_by"] == "test-instance"
        assert certificate["not_after"].startswith(cert.not_valid_after_utc.date().isoformat())
        assert certificate["expiring"]  # 7 days left, under 14
    assert await metric(ca_server, "opamp_fast_agent_certificates_issued_total") == 1
    assert await metric(ca_server, "opamp_fast_agent_certificates_expiring") == 1


async def test_bad_certificate_requests_are_refused(ca_server: Any, ca: LocalCA) -> None:
    strong = ec.generate_private_key(ec.SECP256R1())
    other = format_instance_uid(uuid.uuid4().bytes)
    cases = [
        (CAPS, b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n", "not a PEM"),
        (
            CAPS,
            make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "RSA-1024",
        ),
        (CAPS, make_csr(strong, cn=other), f"names instance uid {other}"),
        (0x3007, make_csr(strong), "AcceptsOpAMPConnectionSettings"),
    ]
    async with open_ws(wss(ca_server.url), ssl_context=ca.client_context()) as ws:
        for caps, csr, why in cases:
            agent = WSAgent(ws, new_uid(), caps=caps)
            message = agent.message(agent_description=description("bad"))
            message.connection_settings_request.CopyFrom(request_of(csr))
            reply = await agent.request(message)
            assert (
                reply.error_response.type == BAD_REQUEST
                and why in reply.error_response.error_message
            )
            assert ca_server.services.registry.get(agent.uid) is None  # nothing of it merged
        # A forged signature parses; the worker that would sign it refuses it, and says so.
        der = bytearray(
            x509.load_pem_x509_csr(make_csr(strong)).public_bytes(serialization.Encoding.DER)
        )
        der[-1] ^= 1
        forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
        agent = WSAgent(ws, new_uid(), caps=CAPS)
        message = agent.message(agent_description=description("forged"))
        message.connection_settings_request.CopyFrom(request_of(forged))
        assert not (await agent.request(message)).HasField("error_response")
        told = await agent.receive(timeout=30)
        assert told.error_response.type == BAD_REQUEST
        assert "signature" in told.error_response.error_message
    for reason in ("malformed", "weak_key", "other_uid", "not_accepted", "bad_signature"):
        refused = await metric(
            ca_server, f'opamp_fast_certificate_requests_refused_total{{reason="{reason}"}}'
        )
        assert refused == 1, reason
    assert await metric(ca_server, "opamp_fast_agent_certificates_issued_total") == 0


async def test_a_server_that_never_saw_the_agent_redelivers_instead_of_issuing(
    ca_server: Any, ca: LocalCA, start_server: Any, ca_settings: Any
) -> None:
    uid, key = new_uid(), ec.generate_private_key(ec.SECP256R1())
    first = await certificate_for(ca_server, ca, uid, make_csr(key))
    # Another instance on the same database (what a restart of this one also starts from):
    # the same key asking again gets the stored certificate, no new serial, no new signature.
    fresh = await start_server(ca_settings(instance_id="fresh"))
    again = await certificate_for(fresh, ca, uid, make_csr(key))
    assert again.cert == first.cert
    assert await metric(fresh, "opamp_fast_agent_certificates_redelivered_total") == 1
    assert await metric(fresh, "opamp_fast_agent_certificates_issued_total") == 0
    # A new key is a new certificate.
    renewed = await certificate_for(
        fresh, ca, uid, make_csr(ec.generate_private_key(ec.SECP256R1()))
    )
    assert renewed.cert != first.cert
    assert await metric(fresh, "opamp_fast_agent_certificates_issued_total") == 1


async def test_rotation_offers_a_new_key_and_certificate(
    ca_server: Any, ca: LocalCA, tmp_path: Path
) -> None:
    async with (
        api_client(ca_server, role="admin", verify=ca.client_context()) as admin,
        open_ws(wss(ca_server.url), ssl_context=ca.client_context()) as ws,
    ):
        agent = WSAgent(ws, new_uid(), caps=CAPS)
        await agent.full_state("rotating")
        await wait_known(admin, agent.uid)
        agent_id = format_instance_uid(agent.uid)
        r = await admin.post(f"/api/agents/{agent_id}/rotate-certificate")
        assert r.status_code == 202, r.text
        assert r.json() == {"agent_id": agent_id, "serving_instance": "test-instance"}
        offered = (await agent.receive(timeout=30)).connection_settings.opamp.certificate
        assert offered.private_key and offered.cert and offered.ca_cert == ca.cert.read_bytes()
        entry = (
            await admin.get("/api/audit", params={"action": "agent.certificate.rotate"})
        ).json()
        assert entry["entries"][0]["target"] == f"agent:{agent_id}"
        assert b"PRIVATE" not in r.content and "PRIVATE" not in str(entry)
        # An agent that does not accept OpAMP connection settings cannot be rotated.
        plain = WSAgent(ws, new_uid(), caps=0x3007)
        await plain.full_state("plain")
        await wait_known(admin, plain.uid)
        r = await admin.post(f"/api/agents/{format_instance_uid(plain.uid)}/rotate-certificate")
        assert r.status_code == 409 and r.json()["error"]["code"] == "capability_missing"
    pair = save_pair(tmp_path, "rotated", offered.cert, offered.private_key)
    async with api_client(ca_server, role="admin", verify=ca.client_context()) as admin:
        async with open_ws(wss(ca_server.url), ssl_context=ca.client_context(pair)) as ws:
            await WSAgent(ws, agent.uid, caps=CAPS).full_state("rotating")
            assert ca_server.services.registry.get(agent.uid).proven
            # Stored online before it leaves: the wait for "offline" below cannot then read the
            # first connection's end while this one's start is still unflushed.
            await wait_status(admin, agent_id, "online")
        shown = (await admin.get(f"/api/agents/{agent_id}/connection-settings")).json()
        serial = format(x509.load_pem_x509_certificate(offered.cert).serial_number, "x")
        assert shown["certificate"]["serial"] == serial
        assert shown["certificate"]["origin"] == "rotation"
        # An agent that is not connected cannot be offered one; an unknown one is a 404.
        await wait_status(admin, agent_id, "offline")
        r = await admin.post(f"/api/agents/{agent_id}/rotate-certificate")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_connected"
        r = await admin.post("/api/agents/00000000-0000-0000-0000-000000000009/rotate-certificate")
        assert r.status_code == 404


async def test_a_plain_http_agent_gets_its_certificate_with_a_later_poll(
    ca_server: Any, ca: LocalCA, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    async with httpx.AsyncClient(base_url=ca_server.url, verify=ca.client_context()) as http:
        agent = HTTPAgent(http, caps=CAPS)
        message = agent.message(agent_description=description("http-csr"))
        message.connection_settings_request.CopyFrom(request_of(make_csr(key)))
        first = await agent.request(message)
        assert first.capabilities & ACCEPTS_CONNECTION_SETTINGS_REQUEST
        # Signed in a worker meanwhile; an HTTP agent is told with a poll.
        with anyio.fail_after(30):
            while True:
                offer = (await agent.heartbeat()).connection_settings.opamp
                if offer.HasField("certificate"):
                    break
                await anyio.sleep(0.05)
        assert offer.heartbeat_interval_seconds == 30 and not offer.certificate.private_key
        # Once: the next poll does not carry it again.
        assert not (await agent.heartbeat()).connection_settings.opamp.HasField("certificate")
    pair = save_pair(tmp_path, "http-agent", offer.certificate.cert, key_pem(key))
    async with httpx.AsyncClient(base_url=ca_server.url, verify=ca.client_context(pair)) as http:
        again = HTTPAgent(http, uid=agent.uid, caps=CAPS)
        reply = await again.full_state("http-csr")
        assert not reply.HasField("error_response")
        assert ca_server.services.registry.get(agent.uid).proven
        # That certificate speaks for its uid only.
        impostor = HTTPAgent(http, caps=CAPS)
        refused = await impostor.post(impostor.message(agent_description=description("x")))
        error = pb.ServerToAgent.FromString(refused.content).error_response
        assert error.type == BAD_REQUEST and "bound to instance uid" in error.error_message
