"""The agent CA: client certificates for agents, from their CSRs or made for a rotation.

Configured by ``agent_ca_cert_file`` and ``agent_ca_key_file`` (a CA that signs agent client
certificates). Its private key is read once from its file and kept in this object only: it is
never written, sent or logged. Nothing here does I/O after :meth:`AgentCA.load`, and nothing
reads a clock (``now`` is passed in).

* :meth:`AgentCA.check` is cheap (parsing, key strength, requested names; no public-key
  operation), so the fleet handler runs it on the event loop and refuses a bad request at once.
* :meth:`AgentCA.sign` (the CSR's signature check, then signing) and :meth:`AgentCA.generate`
  (a new P-256 key for a server-initiated rotation) cost milliseconds: worker threads only.

An issued certificate names the agent, whatever the CSR asked for: subject CN = the instance
uid (canonical UUID) and a ``urn:uuid:`` URI SAN, client authentication only, valid for
``ttl_days`` (never beyond the CA's own expiry). ``fleet.admission.cert_identity`` reads exactly
those names, so with ``tls_client_ca_file`` set to the same CA the certificate proves the uid.
A CSR whose key is weaker than RSA-2048 or P-256, or whose requested names (CN, SANs) name
another instance uid, is refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from ..protocol import format_instance_uid, parse_instance_uid_text

__all__ = ["AgentCA", "CertificateRequest", "CertificateRequestError", "IssuedCertificate"]

MAX_CSR_BYTES: Final = 16 * 1024
MIN_RSA_BITS: Final = 2048
_STRONG_CURVES: Final = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_BACKDATE: Final = dt.timedelta(minutes=5)  # clock skew between the server and agents

_PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CertificateRequestError(ValueError):
    """A certificate request that is not signed. ``reason`` is a short label (metrics):
    ``malformed``, ``weak_key``, ``other_uid``, ``bad_signature``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """A CSR that passed :meth:`AgentCA.check` (its signature is checked by ``sign``)."""

    csr: x509.CertificateSigningRequest = field(repr=False)
    key_sha256: bytes  # of the SubjectPublicKeyInfo: the same key asks again


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    key_sha256: bytes
    pem: bytes = field(repr=False)
    #: Only for a certificate made with a new key (a rotation): the agent's key, delivered once
    #: with it and never stored.
    private_key_pem: bytes | None = field(default=None, repr=False)

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def key_fingerprint(key: _PublicKey) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def describe_key(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.removeprefix("_")


def _strong(key: object) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size >= MIN_RSA_BITS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name in _STRONG_CURVES
    return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


def requested_uids(csr: x509.CertificateSigningRequest) -> set[bytes]:
    """The instance uids a CSR's names spell (subject CN, URI and DNS SANs)."""
    texts = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            texts.append(uri[9:] if uri.lower().startswith("urn:uuid:") else uri)
        texts.extend(san.get_values_for_type(x509.DNSName))
    uids = set()
    for text in texts:
        try:
            uids.add(parse_instance_uid_text(text.strip()))
        except ValueError:
            continue
    return uids


class AgentCA:
    """The CA that signs agent client certificates; see the module docstring."""

    def __init__(
        self, certificate: x509.Certificate, key: _PrivateKey, *, ttl_days: int = 90
    ) -> None:
        if ttl_days < 1:
            raise ValueError("ttl_days must be at least 1")
        self.certificate = certificate
        self._key = key
        self.ttl = dt.timedelta(days=ttl_days)
        self.pem = certificate.public_bytes(serialization.Encoding.PEM)
        self._hash = (
            None
            if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
            else hashes.SHA256()
        )

    def __repr__(self) -> str:
        return f"AgentCA(subject={self.certificate.subject.rfc4514_string()!r})"

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, *, ttl_days: int = 90) -> AgentCA:
        """Read the CA; ConfigError (naming the setting, never the key) when it cannot serve."""
        try:
            certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"agent_ca_cert_file: cannot read a PEM certificate from {cert_file}: {exc}"
            ) from None
        if not _is_ca(certificate):
            raise ConfigError(
                f"agent_ca_cert_file: {cert_file} is not a CA certificate "
                "(basicConstraints CA:TRUE)"
            )
        return cls(certificate, _load_key(key_file, certificate), ttl_days=ttl_days)

    # -- on the event loop: cheap -----------------------------------------------------------
    def check(self, csr_pem: bytes, uid: bytes) -> CertificateRequest:
        """Parse a PEM CSR and check what costs no signature work. Raises
        CertificateRequestError."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CertificateRequestError(
                "malformed", f"certificate request: larger than {MAX_CSR_BYTES} bytes"
            )
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CertificateRequestError(
                "malformed", f"certificate request: not a PEM certificate signing request ({exc})"
            ) from None
        if not _strong(key):
            raise CertificateRequestError(
                "weak_key",
                f"certificate request: {describe_key(key)} keys are refused; use RSA-2048 or "
                "larger, EC P-256/P-384/P-521, Ed25519 or Ed448",
            )
        others = requested_uids(csr) - {uid}
        if others:
            named = ", ".join(sorted(format_instance_uid(u) for u in others))
            raise CertificateRequestError(
                "other_uid",
                f"certificate request names instance uid {named}, not this agent's "
                f"({format_instance_uid(uid)})",
            )
        return CertificateRequest(csr, key_fingerprint(key))  # type: ignore[arg-type]

    # -- in worker threads ------------------------------------------------------------------
    def sign(self, request: CertificateRequest, uid: bytes, now: dt.datetime) -> IssuedCertificate:
        """Check the CSR's signature and sign a certificate for ``uid`` with its key."""
        if not request.csr.is_signature_valid:
            raise CertificateRequestError(
                "bad_signature", "certificate request: its signature does not verify"
            )
        return self._issue(request.csr.public_key(), uid, now)  # type: ignore[arg-type]

    def generate(self, uid: bytes, now: dt.datetime) -> IssuedCertificate:
        """A new P-256 key and its certificate (a server-initiated rotation)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self._issue(key.public_key(), uid, now)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedCertificate(
            issued.serial,
            issued.not_before,
            issued.not_after,
            issued.key_sha256,
            issued.pem,
            private,
        )

    def _issue(self, key: _PublicKey, uid: bytes, now: dt.datetime) -> IssuedCertificate:
        text = format_instance_uid(uid)
        not_before = now - _BACKDATE
        not_after = min(now + self.ttl, self.certificate.not_valid_after_utc)
        rsa_key = isinstance(key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)]))
            .issuer_name(self.certificate.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(encipherment=rsa_key), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:uuid:{text}")]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        cert = builder.sign(self._key, self._hash)  # type: ignore[arg-type]
        return IssuedCertificate(
            cert.serial_number,
            not_before,
            not_after,
            key_fingerprint(key),
            cert.public_bytes(serialization.Encoding.PEM),
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _load_key(key_file: Path, certificate: x509.Certificate) -> _PrivateKey:
    """The CA's private key, checked against its certificate (errors never quote the key)."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"agent_ca_key_file: cannot read an unencrypted PEM private key from {key_file}"
        ) from None
    if not isinstance(key, _PrivateKey):
        raise ConfigError("agent_ca_key_file: its key type cannot sign certificates here")
    if key_fingerprint(key.public_key()) != key_fingerprint(certificate.public_key()):  # type: ignore[arg-type]
        raise ConfigError("agent_ca_key_file: the key does not belong to agent_ca_cert_file")
    return key


def _key_usage(*, encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=encipherment,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
