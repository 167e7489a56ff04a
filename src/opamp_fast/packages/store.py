"""Where package files live: a directory on the local filesystem, or an S3-compatible bucket.

Both backends sit behind :class:`PackageStore`, a small synchronous interface that the registry
calls from worker threads (never on the event loop). An upload is first spooled to a local
staging file while its SHA-256 is computed (``registry``); only a complete file with the right
hash is handed to :meth:`PackageStore.put`, so a refused upload leaves nothing behind. Keys are
``<name>/<version>`` (both validated: no ``/``, no ``..``).

* :class:`FilesystemStore`: ``put`` is an atomic rename from a staging directory on the same
  filesystem; reads seek and read in bounded chunks.
* :class:`S3Store` (boto3): ``put`` is boto3's managed transfer (multipart above 8 MiB, in
  parallel parts), reads are ranged ``GetObject`` calls, and offers carry presigned URLs so
  agents download straight from the object store. Endpoint, region and credentials come from
  the settings, else from boto3's usual chain (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["FilesystemStore", "PackageStore", "S3Store", "StoreError", "open_store"]

CHUNK_BYTES = 1024 * 1024


class StoreError(Exception):
    """The store cannot do what was asked (unreachable, missing bucket, permissions)."""


class PackageStore(Protocol):
    kind: str  # "filesystem" or "s3": shown by the API and in logs

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise StoreError unless the store is usable (directory writable, bucket reachable)."""

    def staging_dir(self) -> Path:
        """Where uploads are spooled before ``put`` (a local directory)."""

    def put(self, key: str, source: Path) -> None:
        """Store the complete file ``source`` under ``key``; ``source`` is consumed."""

    def delete(self, key: str) -> None: ...

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        """Bytes ``start`` to ``end`` inclusive, in chunks of at most ``CHUNK_BYTES``."""

    def direct_url(self, key: str, ttl_s: int) -> str | None:
        """A URL agents may download from without our server (S3: presigned), or None."""


class FilesystemStore:
    kind = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"filesystem {self.root}"

    def check(self) -> None:
        try:
            self.staging_dir()
        except OSError as exc:
            raise StoreError(f"package directory {self.root} is not usable: {exc}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"package directory {self.root} is not writable")

    def staging_dir(self) -> Path:
        path = self.root / ".uploads"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # same filesystem: atomic, never a half-written file

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        try:
            path.parent.rmdir()
        except OSError:
            pass  # other versions remain

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"package file {key} is missing from {self.root}") from None
        with f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise StoreError(f"package file {key} is shorter than recorded")
                left -= len(chunk)
                yield chunk

    def direct_url(self, key: str, ttl_s: int) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class S3Options:
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


class S3Store:
    kind = "s3"

    def __init__(self, options: S3Options) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.options = options
        session = boto3.session.Session(
            aws_access_key_id=options.access_key_id,
            aws_secret_access_key=options.secret_access_key,
            region_name=options.region,
        )
        config = Config(
            signature_version="s3v4",
            # Path-style works with every S3-compatible server (MinIO, Ceph, moto) and AWS.
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=32,
        )
        self._client: Any = session.client("s3", endpoint_url=options.endpoint_url, config=config)
        self._transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024, max_concurrency=4)
        self._staging = Path(tempfile.gettempdir()) / "opamp-fast-uploads"

    def describe(self) -> str:
        where = f" at {self.options.endpoint_url}" if self.options.endpoint_url else ""
        return f"s3://{self.options.bucket}/{self.options.prefix}{where}"

    def _key(self, key: str) -> str:
        return f"{self.options.prefix}{key}"

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.options.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"bucket {self.options.bucket} is not usable: {exc}") from None

    def staging_dir(self) -> Path:
        self._staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._staging

    def put(self, key: str, source: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.upload_file(
                str(source), self.options.bucket, self._key(key), Config=self._transfer
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"upload of {key} to {self.describe()} failed: {exc}") from None
        finally:
            source.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.options.bucket, Key=self._key(key))

    def read(self, key: str, start: int, end: int) -> Generator[bytes, None, None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(
                Bucket=self.options.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"cannot read {key} from {self.describe()}: {exc}") from None
        body = response["Body"]
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def direct_url(self, key: str, ttl_s: int) -> str | None:
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.options.bucket, "Key": self._key(key)},
            ExpiresIn=min(ttl_s, 7 * 86400),  # SigV4's limit
        )
        return url


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, "prefix/") (prefix may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"package_store: {url!r} is not s3://bucket[/prefix]")
    prefix = parts.path.strip("/")
    return parts.netloc, (prefix + "/" if prefix else "")


def open_store(
    location: str | None,
    *,
    default_root: Path,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> PackageStore:
    """The store a ``package_store`` setting names: unset -> ``default_root`` on disk; a path
    or ``file://`` URL -> that directory; ``s3://bucket/prefix`` -> S3."""
    if not location:
        return FilesystemStore(default_root)
    if location.startswith("s3://"):
        bucket, prefix = parse_s3_url(location)
        return S3Store(
            S3Options(
                bucket,
                prefix,
                endpoint_url=endpoint_url,
                region=region,
                access_key_id=access_key_id,
                secret_access_key=secret_access_key,
            )
        )
    if location.startswith("file://"):
        return FilesystemStore(Path(urlsplit(location).path))
    if "://" in location:
        raise ConfigError(f"package_store: {location!r}: use a directory, file:// or s3://")
    return FilesystemStore(Path(location))
