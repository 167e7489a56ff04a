"""The agent CA (connection_settings.ca): CSRs made at test time with ``cryptography``, checked,
refused or signed, and the certificates it issues verified as a TLS server would."""

from __future__ import annotations

import datetime as dt
import ssl
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opamp_fast.connection_settings.ca import AgentCA, CertificateRequestError
from opamp_fast.errors import ConfigError
from opamp_fast.fleet.admission import cert_identity
from opamp_fast.protocol import format_instance_uid
from tests.helpers.certs import LocalCA, make_ca

UID = uuid.uuid4().bytes
OTHER = uuid.uuid4().bytes
NOW = dt.datetime.now(dt.UTC)


def make_csr(
    key: object, cn: str = "OpAMP Example Client", sans: list[x509.GeneralName] | None = None
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def local(tmp_path: Path) -> LocalCA:
    return make_ca(tmp_path / "pki", "agent CA", days=365)


@pytest.fixture
def ca(local: LocalCA) -> AgentCA:
    return AgentCA.load(local.cert, local.key_file(), ttl_days=30)


def test_signs_a_csr_for_the_agents_uid_whatever_it_asked(ca: AgentCA, local: LocalCA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = ca.check(make_csr(key), UID)
    issued = ca.sign(request, UID, NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    text = format_instance_uid(UID)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == text
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:uuid:{text}"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert cert.serial_number == issued.serial and issued.private_key_pem is None
    assert dt.timedelta(days=29) < issued.not_after - NOW <= dt.timedelta(days=30)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(local.cert.read_bytes()))
    # What the TLS server reads from it names the uid (admission.cert_identity).
    seen = {
        "subject": ((("commonName", text),),),
        "subjectAltName": (("URI", f"urn:uuid:{text}"),),
    }
    assert cert_identity(seen) == UID


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
)
def test_strong_keys_of_other_kinds_are_signed(ca: AgentCA, key: object) -> None:
    issued = ca.sign(ca.check(make_csr(key), UID), UID, NOW)
    assert x509.load_pem_x509_certificate(issued.pem).serial_number == issued.serial


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA-1024"),
        (ec.generate_private_key(ec.SECP224R1()), "EC secp224r1"),
    ],
)
def test_weak_keys_are_refused(ca: AgentCA, key: object, shown: str) -> None:
    with pytest.raises(CertificateRequestError) as refused:
        ca.check(make_csr(key), UID)
    assert refused.value.reason == "weak_key" and shown in refused.value.message


def test_a_csr_naming_another_uid_is_refused(ca: AgentCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = format_instance_uid(OTHER)
    for csr in (
        make_csr(key, cn=other),
        make_csr(key, cn=OTHER.hex()),
        make_csr(key, sans=[x509.UniformResourceIdentifier(f"urn:uuid:{other}")]),
        make_csr(key, sans=[x509.DNSName(other)]),
    ):
        with pytest.raises(CertificateRequestError) as refused:
            ca.check(csr, UID)
        assert refused.value.reason == "other_uid" and other in refused.value.message
    # Its own uid is fine, and so are names that are no uid at all.
    mine = format_instance_uid(UID)
    ca.check(make_csr(key, cn=mine, sans=[x509.DNSName("host.example")]), UID)


def test_malformed_and_forged_requests_are_refused(ca: AgentCA) -> None:
    for junk in (
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END",
        b"x" * 20000,
    ):
        with pytest.raises(CertificateRequestError) as refused:
            ca.check(junk, UID)
        assert refused.value.reason == "malformed"
    # A CSR whose signature does not match its key parses, and is refused when signing.
    csr = x509.load_pem_x509_csr(make_csr(ec.generate_private_key(ec.SECP256R1())))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    request = ca.check(forged, UID)
    with pytest.raises(CertificateRequestError) as refused:
        ca.sign(request, UID, NOW)
    assert refused.value.reason == "bad_signature"


def test_a_rotation_makes_a_key_and_the_pair_works_for_mtls(ca: AgentCA, local: LocalCA) -> None:
    issued = ca.generate(UID, NOW)
    assert issued.private_key_pem is not None and b"PRIVATE KEY" in issued.private_key_pem
    assert "PRIVATE" not in repr(issued)
    cert_file, key_file = local.directory / "r.crt", local.directory / "r.key"
    cert_file.write_bytes(issued.pem)
    key_file.write_bytes(issued.private_key_pem)
    context = ssl.create_default_context()
    context.load_cert_chain(cert_file, key_file)  # the key belongs to the certificate


def test_the_certificate_never_outlives_the_ca(local: LocalCA) -> None:
    ca = AgentCA.load(local.cert, local.key_file(), ttl_days=3650)
    issued = ca.generate(UID, NOW)
    assert issued.not_after == ca.certificate.not_valid_after_utc


def test_loading_refuses_what_cannot_serve(tmp_path: Path, local: LocalCA) -> None:
    other = make_ca(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not belong"):
        AgentCA.load(local.cert, other.key_file())
    with pytest.raises(ConfigError, match="agent_ca_cert_file"):
        AgentCA.load(tmp_path / "missing.crt", local.key_file())
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as refused:
        AgentCA.load(local.cert, junk)
    assert "secret" not in str(refused.value)
    leaf = local.issue("leaf", server=False)
    with pytest.raises(ConfigError, match="not a CA"):
        AgentCA.load(leaf.cert, leaf.key)
