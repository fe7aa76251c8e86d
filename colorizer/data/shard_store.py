"""Where prepared shards are read from: a local (or shared) folder, or an S3-compatible bucket.

A bucket's shards are downloaded whole into a local cache before they are read (a shard is
read at random positions, and one GET per shard costs far less than one per image), verified
against the manifest's size and SHA-256, and renamed into place only then, so the cache never
holds a partial or corrupt shard. The cache is bounded: past ``cache_limit_gb`` the least
recently used shards are deleted (a process still reading a deleted shard keeps its open
file). Every process of a machine (DDP ranks, their loader workers) may share one cache
folder: a shard is downloaded by one of them while the others wait for it.

Credentials and the endpoint come from boto3's usual places (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``), or ``data.endpoint_url``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from colorizer.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHUNK = 8 << 20


class StoreUnavailable(DataError):
    """The store could not be read (endpoint, credentials, network): the shards themselves
    may be fine, so this is never skipped as a bad shard."""


class ShardDamaged(DataError):
    """A shard is missing from the store, or its bytes are not the ones prepared."""


class ShardStore(ABC):
    """The shards of one prepared dataset and its manifest."""

    location: str  # what the user named: a folder or s3://bucket/prefix

    @abstractmethod
    def read_manifest(self) -> bytes:
        """The manifest's bytes; DataError (one line) when it cannot be read."""

    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Bytes of every shard present, by file name."""

    @abstractmethod
    def open(self, name: str, size: int, sha256: str) -> BinaryIO:
        """Shard ``name`` open for reading (downloaded first if need be); OSError or
        DataError if it cannot be had. An open shard stays readable if a cache evicts it."""


def open_store(
    root: str,
    *,
    endpoint_url: str | None = None,
    cache_dir: str | None = None,
    cache_limit_gb: float = 20.0,
) -> ShardStore:
    """The store of ``root``: ``s3://bucket/prefix`` or a local folder."""
    if root.startswith("s3://"):
        return BucketStore(root, endpoint_url=endpoint_url, cache_dir=cache_dir,
                           cache_limit_bytes=int(cache_limit_gb * 1e9))  # fmt: skip
    if "://" in root:
        raise DataError(f"data.root={root}: shards are read from a folder or s3://bucket/prefix")
    return FolderStore(Path(root).expanduser())


class FolderStore(ShardStore):
    """Shards in a folder: a local disk or shared storage (NFS, Lustre) every node mounts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)

    def read_manifest(self) -> bytes:
        path = self.folder / MANIFEST
        if not path.is_file():
            what = "does not exist" if not self.folder.exists() else f"has no {MANIFEST}"
            raise DataError(
                f"data.root={self.folder} {what}: prepare shards there first with "
                f"python -m colorizer.prepare data=<curated|coco|internet> output={self.folder}"
            )
        return path.read_bytes()

    def sizes(self) -> dict[str, int]:
        return {path.name: path.stat().st_size for path in self.folder.glob("*.tar")}

    def open(self, name: str, size: int, sha256: str) -> BinaryIO:
        return open(self.folder / name, "rb")  # noqa: SIM115 (the caller closes it)


class BucketStore(ShardStore):
    """Shards under an S3 prefix, read through a bounded local cache."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None,
        cache_dir: str | None,
        cache_limit_bytes: int,
    ) -> None:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise DataError(f"data.root={url} names no bucket: use s3://bucket/prefix")
        self.location = url.rstrip("/")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.endpoint_url = endpoint_url
        # A folder per dataset, also under a given cache_dir: several datasets (or sizes of
        # one) share a machine's cache without their shard names meeting.
        digest = hashlib.blake2b(self.location.encode(), digest_size=6).hexdigest()
        base = Path(cache_dir or "~/.cache/colorizer/shards").expanduser()
        self.cache = base / f"{self.bucket}-{digest}"
        self.cache_limit_bytes = cache_limit_bytes
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # A boto3 client must not cross into another process (loader workers make their own).
        return {**self.__dict__, "_client": None}

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to, for messages (without making a client that may be
        what failed)."""
        if self._client is not None:
            return self._client.meta.endpoint_url
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS S3"
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as error:
                raise DataError(f"{self.location} needs boto3: pip install boto3") from error
            config = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            )
            # A session of its own: boto3's default one keeps the credentials it first found.
            session = boto3.session.Session()
            self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read_manifest(self) -> bytes:
        with self._requests(MANIFEST):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(MANIFEST))["Body"]
            return body.read()

    def sizes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._requests("the shard list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(""), Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self._key("")) :]
                    if name.endswith(".tar") and "/" not in name:
                        found[name] = int(item["Size"])
        return found

    def open(self, name: str, size: int, sha256: str) -> BinaryIO:
        # Named by content too: a shard uploaded again (a new manifest) is a new file here.
        path = self.cache / f"{sha256[:16]}-{name}"
        if _has_size(path, size):
            try:
                handle = open(path, "rb")  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError:
                pass  # evicted between the look and the open: downloaded again below
            else:
                os.utime(handle.fileno())  # recently used: evicted last
                return handle
        self.cache.mkdir(parents=True, exist_ok=True)
        with _locked(self.cache / f".{name}.lock"):  # one download per machine
            if _has_size(path, size):
                try:
                    return open(path, "rb")  # noqa: SIM115 (another process fetched it)
                except FileNotFoundError:
                    pass
            handle = self._download(name, path, size, sha256)
        self._evict(keep=path)
        return handle

    def _download(self, name: str, path: Path, size: int, sha256: str) -> BinaryIO:
        """Download ``name`` to ``path``, verified; returns it open (before anyone can evict
        it). A connection that breaks is tried again (3 tries, 1 and 4 s apart)."""
        from botocore.exceptions import BotoCoreError, ClientError

        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            for attempt in range(3):
                try:
                    digest = self._fetch(name, partial)
                    break
                except ClientError:  # an answer (refused, missing): asking again will not help
                    with self._requests(name):
                        raise
                except (BotoCoreError, OSError) as error:  # the connection, or our disk
                    if attempt == 2:
                        if isinstance(error, BotoCoreError):
                            with self._requests(name):
                                raise
                        raise StoreUnavailable(
                            f"cannot download {self.location}/{name} into {self.cache}: {error}"
                        ) from error
                    log.warning("downloading %s/%s failed (%s): trying again", self.location,
                                name, error)  # fmt: skip
                    time.sleep(4**attempt)
            got = partial.stat().st_size
            if got != size or digest != sha256:
                raise ShardDamaged(
                    f"{self.location}/{name} is damaged: {got} bytes, SHA-256 {digest[:12]}…, "
                    f"the manifest says {size} bytes, {sha256[:12]}…: upload the shard again"
                )
            handle = open(partial, "rb")  # noqa: SIM115 (the caller closes it)
            os.replace(partial, path)
            return handle
        finally:
            partial.unlink(missing_ok=True)

    def _fetch(self, name: str, partial: Path) -> str:
        """Stream the object into ``partial``; its SHA-256."""
        digest = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        with open(partial, "wb") as file:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
                file.write(chunk)
        return digest.hexdigest()

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used shards past the bound, and the partial downloads
        of processes that died (killed, pre-empted)."""
        entries = []
        for path in self.cache.glob("*.tar"):
            try:
                entries.append((path.stat(), path))
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
        for partial in self.cache.glob(".*.partial"):
            pid = partial.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                partial.unlink(missing_ok=True)
        total = sum(stat.st_size for stat, _ in entries)
        for stat, path in sorted(entries, key=lambda entry: entry[0].st_mtime):
            if total <= self.cache_limit_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= stat.st_size

    @contextmanager
    def _requests(self, what: str):
        """S3 errors as one line naming the endpoint and what to do."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        try:
            yield
        except EndpointConnectionError as error:
            raise StoreUnavailable(
                f"cannot reach the S3 endpoint {self._endpoint_or(error)} for {self.location}: "
                "check data.endpoint_url (or AWS_ENDPOINT_URL) and the network"
            ) from error
        except NoCredentialsError as error:
            raise StoreUnavailable(
                f"no S3 credentials for {self.location} at {self.endpoint}: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from error
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            missing = code in ("NoSuchKey", "404") and what.endswith(".tar")
            kind = ShardDamaged if missing else StoreUnavailable
            raise kind(self._client_error_line(error, what)) from error
        except DataError:
            raise
        except BotoCoreError as error:
            raise StoreUnavailable(
                f"S3 endpoint {self._endpoint_or(error)}: {error} (reading {self.location})"
            ) from error

    def _endpoint_or(self, error: Exception) -> str:
        return str(getattr(error, "kwargs", {}).get("endpoint_url") or self.endpoint)

    def _client_error_line(self, error: Any, what: str) -> str:
        code = str(error.response.get("Error", {}).get("Code", ""))
        where = f"{self.endpoint}"
        if code in ("NoSuchBucket",):
            return (
                f"bucket {self.bucket} does not exist at {where}: create it and upload the "
                f"shards, or fix data.root={self.location}"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                    "InvalidToken", "ExpiredToken"):  # fmt: skip
            return (
                f"{where} refused the credentials for s3://{self.bucket} ({code}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if code in ("NoSuchKey", "404"):
            if what == MANIFEST:
                return (
                    f"{self.location} has no {MANIFEST} at {where}: prepare shards with "
                    "python -m colorizer.prepare and upload the whole output folder there"
                )
            return f"{self.location}/{what} is missing at {where}: upload it again"
        return f"S3 endpoint {where} refused {what} of {self.location}: {code or error}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
