"""Signed, expiring download URLs: ``?expires=<unix seconds>&signature=<hex HMAC-SHA256>``.

The HMAC covers the URL path and the expiry (``"<path>\\n<expires>"``), so a signature is good
for one file until one moment, and nothing in it can be changed. The key is shared by every
instance of a fleet (``package_url_secret``, else derived from the agent-token key), so a URL
minted by one instance is honoured by all.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["URLSigner"]

_LABEL = b"opamp-fast package urls v1"


class URLSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the URL signing key must be at least 16 bytes")
        self._key = hmac.new(key, _LABEL, hashlib.sha256).digest()

    def signature(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, path: str, expires: int) -> str:
        """The query string that authorises ``path`` until ``expires``."""
        return f"expires={expires}&signature={self.signature(path, expires)}"

    def verify(self, path: str, expires: int, signature: str, *, now: float) -> str | None:
        """None when valid, else why not (safe to show)."""
        if expires < now:
            return "the download URL has expired"
        expected = self.signature(path, expires).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            return "bad signature"
        return None
