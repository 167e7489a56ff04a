"""TLS for the shared port: one server context from the settings, or None for plain TCP."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["server_tls_context"]


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS 1.2+ with the configured certificate; client certificates are requested and
    verified against ``tls_client_ca_file`` when it is set (``CERT_OPTIONAL``: the OpAMP
    handler then refuses agents without one, while probes and the API still connect)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert_file/tls_key_file: cannot load {settings.tls_cert_file} with "
            f"{settings.tls_key_file}: {exc}"
        ) from None
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"tls_client_ca_file: cannot load {settings.tls_client_ca_file}: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
