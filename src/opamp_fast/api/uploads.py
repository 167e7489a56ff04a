"""A multipart package upload (``POST /api/packages``), read as the body arrives.

python-multipart's push parser calls back for every piece of the body; the callbacks only queue
events, which :class:`Upload` then consumes in order, so that spooling the file can await: the
file part is written to a staging file in 1 MiB steps and hashed (SHA-256) in the same
worker-thread call. A package is never held in memory and the event loop never hashes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .body import declared_length
from .errors import APIError, invalid_parameter

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FLUSH_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 1024
MAX_SIGNATURE_BYTES = 64 * 1024
MULTIPART_OVERHEAD = 256 * 1024  # fields, part headers and a signature beside the file


def too_large(max_bytes: int) -> APIError:
    return APIError(413, "too_large", f"the package is larger than {max_bytes} bytes")


class Upload:
    """What one multipart upload carried: text fields, a signature, and the spooled file."""

    def __init__(self, staging: Path, max_bytes: int, parts: Collection[str]) -> None:
        self.staging = staging
        self.max_bytes = max_bytes
        self.parts = parts
        self.fields: dict[str, str] = {}
        self.signature: bytes | None = None
        self.path: Path | None = None
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._buffer = bytearray()
        self._part: str | None = None
        self._part_bytes = bytearray()
        self._in_file = False

    @property
    def in_part(self) -> bool:
        return self._part is not None or self._in_file

    async def consume(self, events: list[tuple[str, Any]]) -> None:
        for kind, value in events:
            if kind == "start":
                await self.start(*value)
            elif kind == "data":
                await self.data(value)
            else:
                await self.end()

    async def start(self, name: str, has_filename: bool) -> None:
        if name not in self.parts:
            expected = ", ".join(self.parts)
            raise APIError(
                400, "invalid_upload", f"unknown part {name[:40]!r}; expected {expected}"
            )
        self._part = name
        self._part_bytes.clear()
        if name == "file":
            if self.path is not None:
                raise APIError(400, "invalid_upload", "more than one 'file' part")
            fd, tmp = tempfile.mkstemp(prefix="upload-", dir=self.staging)
            self.path = Path(tmp)
            self._file = os.fdopen(fd, "wb")
            self._in_file = True

    async def data(self, chunk: bytes) -> None:
        if self._in_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise too_large(self.max_bytes)
            self._buffer += chunk
            if len(self._buffer) >= FLUSH_BYTES:
                await self._flush()
            return
        limit = MAX_SIGNATURE_BYTES if self._part == "signature" else MAX_FIELD_BYTES
        self._part_bytes += chunk
        if len(self._part_bytes) > limit:
            raise APIError(413, "too_large", f"field {self._part!r} is longer than {limit} bytes")

    async def end(self) -> None:
        if self._in_file:
            await self._flush()
            file, self._file = self._file, None
            assert file is not None
            await anyio.to_thread.run_sync(file.close)
            self._in_file = False
        elif self._part == "signature":
            self.signature = bytes(self._part_bytes)
        elif self._part is not None:
            try:
                self.fields[self._part] = self._part_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_parameter(self._part, "is not UTF-8 text") from None
        self._part = None

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        file = self._file
        assert file is not None
        sha = self.sha256

        def write() -> None:  # hashlib releases the GIL on large buffers
            sha.update(data)
            file.write(data)

        await anyio.to_thread.run_sync(write)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class _PartEvents:
    """The parser's callbacks: each part's start (name, whether it is a file), data and end,
    queued as events until :meth:`take`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def take(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self.events.append(("start", (name, b"filename" in params)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self.events.append(("end", None))


async def receive_upload(
    request: Request, staging: Path, max_bytes: int, parts: Collection[str]
) -> Upload:
    """Parse the multipart body as it arrives, accepting the parts named ``parts``; 413 beyond
    ``max_bytes`` (at once when ``Content-Length`` says so), 400 for a malformed body. On any
    failure the staging file is removed."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise APIError(
            400, "invalid_upload", "the body must be multipart/form-data with a boundary"
        )
    declared = declared_length(request)
    if declared is not None and declared > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)
    upload = Upload(staging, max_bytes, parts)
    events = _PartEvents()
    parser = MultipartParser(boundary, events.callbacks())
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except Exception as exc:  # python-multipart's MultipartParseError and friends
                raise APIError(400, "invalid_upload", f"malformed multipart body: {exc}") from None
            await upload.consume(events.take())
        parser.finalize()
        if upload.in_part:
            raise APIError(
                400, "invalid_upload", "the multipart body ended in the middle of a part"
            )
    except BaseException:
        upload.discard()
        raise
    return upload
