"""The OpenAPI document as a real server serves it, kept in
``tests/integration/openapi.snapshot.json``.

``tests/integration/test_openapi.py::test_document_matches_snapshot`` compares the live
``/openapi.json`` of a test server with that file byte for byte, so a refactoring that changes
the document by accident fails. When an API change is intended, regenerate the file with
``python scripts/openapi_snapshot.py --write`` and commit it with the change (its diff is the
change to the document); with no argument the script prints the document it would write.

The file is the served bytes with whitespace added (``msgspec.json.format``, two-space indent)
so that its diffs are readable; removing that whitespace gives the served bytes back exactly.
The server is a real one (``serve``, an embedded Postgres in a temporary directory) with the
defaults the test fixtures use: nothing the document shows depends on the host, port or database.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import urllib.request
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ROOT / "tests" / "integration" / "openapi.snapshot.json"


def snapshot_text(served: bytes) -> bytes:
    """The snapshot file's bytes for the document ``served`` (the body of ``/openapi.json``)."""
    return msgspec.json.format(served, indent=2) + b"\n"


def served_bytes(snapshot: bytes) -> bytes:
    """The body of ``/openapi.json`` that ``snapshot`` (the file's bytes) records."""
    return msgspec.json.format(snapshot, indent=-1)  # every whitespace outside strings removed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


async def fetch_document() -> bytes:
    """``/openapi.json`` of a freshly started server (embedded Postgres, default settings)."""
    from opamp_fast.server import RunningServer, serve
    from opamp_fast.settings import Settings

    with tempfile.TemporaryDirectory(prefix="opamp-fast-openapi-") as tmp:
        settings = Settings(
            host="127.0.0.1",
            port=_free_port(),
            data_dir=Path(tmp) / "pgdata",
            instance_id="openapi-snapshot",
            graceful_timeout_s=2.0,
        )
        shutdown = anyio.Event()
        async with anyio.create_task_group() as tg:
            running: RunningServer = await tg.start(
                partial(serve, settings, shutdown_trigger=shutdown)
            )
            try:
                return await anyio.to_thread.run_sync(_get, f"{running.url}/openapi.json")
            finally:
                shutdown.set()


def main(argv: list[str]) -> int:
    if argv not in ([], ["--write"]):
        print("usage: python scripts/openapi_snapshot.py [--write]", file=sys.stderr)
        return 2
    text = snapshot_text(anyio.run(fetch_document))
    if argv == ["--write"]:
        SNAPSHOT.write_bytes(text)
        print(f"wrote {SNAPSHOT} ({len(text)} bytes)")
    else:
        sys.stdout.buffer.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
