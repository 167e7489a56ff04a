"""Signed, expiring download URLs: ``?expires=<unix seconds>&signature=<hex HMAC-SHA256>``.

The HMAC covers the file's path with the package name and version as text, and the expiry
(``"/v1/packages/<name>/<version>/file\\n<expires>"``), so a signature is good for one file until
one moment, and nothing in it can be changed. The URL itself carries the name and version
percent-encoded (``1.0.1+build.7`` is ``1.0.1%2Bbuild.7`` in the path); the server verifies
against the decoded ones it routes on. Signing the decoded form is what makes the two agree:
an agent's HTTP client or a proxy may re-spell the path (``+``, ``%2B``, ``%2b``), never what it
decodes to. For names and versions with nothing to encode the message is the URL's own path,
as it always was, so URLs minted before stay valid.

The key is shared by every instance of a fleet (``package_url_secret``, else derived from the
agent-token key), so a URL minted by one instance is honoured by all.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import quote

__all__ = ["DOWNLOAD_PATH", "URLSigner"]

DOWNLOAD_PATH: Final = "/v1/packages/{name}/{version}/file"
_LABEL = b"opamp-fast package urls v1"


class URLSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the URL signing key must be at least 16 bytes")
        self._key = hmac.new(key, _LABEL, hashlib.sha256).digest()

    def signature(self, name: str, version: str, expires: int) -> str:
        path = DOWNLOAD_PATH.format(name=name, version=version)
        message = f"{path}\n{expires}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, name: str, version: str, expires: int) -> str:
        """Path and query of the URL that authorises this file until ``expires``."""
        path = DOWNLOAD_PATH.format(name=quote(name, safe=""), version=quote(version, safe=""))
        return f"{path}?expires={expires}&signature={self.signature(name, version, expires)}"

    def verify(
        self, name: str, version: str, expires: int, signature: str, *, now: float
    ) -> str | None:
        """None when valid, else why not (safe to show)."""
        if expires < now:
            return "the download URL has expired"
        expected = self.signature(name, version, expires).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return "bad signature"
        return None
