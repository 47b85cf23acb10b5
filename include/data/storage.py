"""One interface over the data zones: a local directory by default, S3 through boto3.

Keys are relative, `/`-separated paths such as `landing/flights/dt=2013-01-07/part.parquet`.
Writes are atomic on both backends (temp file + rename locally; a single PUT on S3), so a reader
never sees half a file, and a failed write (a full disk, an endpoint down) leaves the previous
content as it was. `create_only=True` refuses to replace an existing object: zones that must never
be rewritten (landing, validated data) write that way.

Faults are said as what failed where: a write error names the file; an S3 endpoint that refuses
or stalls fails within `LOOP_S3_MAX_ATTEMPTS` requests of `LOOP_S3_TIMEOUT_SECONDS` each with
`StorageUnavailableError` naming the endpoint and bucket (the task's retries try again later);
`read_bytes(max_bytes=...)` refuses an oversized object before reading it.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from include.settings import get_settings

if TYPE_CHECKING:
    import pandas as pd


class ObjectExistsError(FileExistsError):
    """Raised by `create_only` writes when the key already holds an object."""


class ObjectTooLargeError(ValueError):
    """`read_bytes(max_bytes=...)` met a larger object, and did not read it."""


class StorageUnavailableError(ConnectionError):
    """The storage did not answer (refused, timed out, 5xx) after the configured attempts."""


def atomic_write(path: Path, data: bytes, *, create_only: bool = False, tmp_dir: Path | None = None) -> None:
    """Write `data` to `path` so that a reader sees the old content or the new, never a part:
    a temporary file beside it (a unique name: concurrent writers never share one), fsynced, then
    renamed over `path`. `create_only` links instead of renaming, which fails if `path` exists
    (`ObjectExistsError`). `tmp_dir` (same filesystem) keeps the temporary file out of a watched
    directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # ENOSPC, EFBIG, EIO: the error of a failed write names no file
            raise OSError(exc.errno, f"{exc.strerror or exc}: could not write {path}; its previous content is unchanged") from exc
        if create_only:
            try:
                os.link(tmp, path)  # atomic, and fails if the target exists
            except FileExistsError:
                raise ObjectExistsError(f"refusing to overwrite {path}") from None
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Storage(Protocol):
    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes: ...
    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class LocalStorage:
    root: Path

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents and path != self.root.resolve():
            raise ValueError(f"storage key {key!r} escapes the storage root {self.root}")
        return path

    def uri(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object at {path}")
        with path.open("rb") as f:
            if max_bytes is None:
                return f.read()
            _check_size(self.uri(key), os.fstat(f.fileno()).st_size, max_bytes)
            data = f.read(max_bytes + 1)  # bounded, should the file grow meanwhile
        _check_size(self.uri(key), len(data), max_bytes)
        return data

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        path = self._path(key)
        atomic_write(path, data, create_only=create_only)
        return f"file://{path}"

    def delete(self, key: str) -> None:
        """Remove the object; one already gone is no error."""
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        root = self.root.resolve()
        return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))


@dataclass(frozen=True)
class S3Storage:
    bucket: str
    prefix: str
    endpoint_url: str = ""
    timeout_seconds: float = 10
    max_attempts: int = 3

    @property
    def _client(self):
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},  # exponential backoff with jitter
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url or None, config=config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @contextmanager
    def _request(self, action: str, key: str) -> Iterator[None]:
        """Botocore's errors as what failed where: a missing object, an object that exists, or an
        endpoint that refused, stalled or failed for every attempt."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"no object at {self.uri(key)}") from None
            if code in ("PreconditionFailed", "412"):
                raise ObjectExistsError(f"refusing to overwrite {self.uri(key)}") from None
            if status >= 500:
                raise self._unavailable(action, key, exc) from exc
            exc.add_note(f"while {action} {self.uri(key)} at {self.endpoint_url or 'AWS S3'}")
            raise
        except (BotoConnectionError, HTTPClientError) as exc:  # refused, timed out, connection closed
            raise self._unavailable(action, key, exc) from exc

    def _unavailable(self, action: str, key: str, exc: Exception) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"S3 storage unavailable: {action} {self.uri(key)} at endpoint {self.endpoint_url or 'AWS S3'} "
            f"(bucket {self.bucket!r}) failed after {self.max_attempts} attempt(s) of at most {self.timeout_seconds:g}s: {exc}. "
            "Check that the endpoint is up (LOOP_S3_ENDPOINT_URL); the task retries later."
        )

    def exists(self, key: str) -> bool:
        try:
            with self._request("checking", key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        with self._request("reading", key):
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            with closing(obj["Body"]) as body:
                if max_bytes is not None:
                    _check_size(self.uri(key), obj["ContentLength"], max_bytes)  # a refused object is never downloaded
                return body.read()

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        extra = {"IfNoneMatch": "*"} if create_only else {}
        with self._request("writing", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        return self.uri(key)

    def delete(self, key: str) -> None:
        """Remove the object; one already gone is no error (S3 answers 204 either way)."""
        with self._request("deleting", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        with self._request("listing", prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ObjectTooLargeError(f"{uri} is {size:,} bytes, more than the {max_bytes:,} allowed: not read")


def get_storage(uri: str | None = None) -> Storage:
    """The storage behind `uri` (default: LOOP_STORAGE_URI)."""
    settings = get_settings()
    uri = uri or settings.storage_uri
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"LOOP_STORAGE_URI={uri!r} names no bucket")
        return S3Storage(
            bucket=bucket,
            prefix=prefix.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            timeout_seconds=settings.s3_timeout_seconds,
            max_attempts=settings.s3_max_attempts,
        )
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStorage(root=Path(uri.removeprefix("file://")))


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_parquet(storage: Storage, key: str, df: pd.DataFrame, *, create_only: bool = False) -> str:
    return storage.write_bytes(key, parquet_bytes(df), create_only=create_only)


def read_parquet(storage: Storage, key: str) -> pd.DataFrame:
    """Read a Parquet object; a file that is not valid Parquet raises `MalformedPartitionError`."""
    return parse_parquet(storage.read_bytes(key), storage.uri(key))


def parse_parquet(data: bytes, uri: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise MalformedPartitionError(_unreadable(data, uri, exc)) from exc


def parquet_metadata(data: bytes, uri: str):
    """The footer of a Parquet file (`num_rows`, row groups and their sizes), read without decoding a row."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(io.BytesIO(data))
    except Exception as exc:
        raise MalformedPartitionError(_unreadable(data, uri, exc)) from exc


def _unreadable(data: bytes, uri: str, exc: Exception) -> str:
    """Why `data` is not Parquet, in the words of the likely cause (pyarrow only says what it missed)."""
    magic = b"PAR1"
    if not data:
        cause = "the file is empty (0 bytes)"
    elif not data.startswith(magic):
        head = data[:40]
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        cause = (
            f"it starts with text {head!r}, not Parquet's magic bytes: a CSV or JSON file?"
            if text
            else "no Parquet magic bytes at its start"
        )
    elif not data.endswith(magic):
        cause = f"it starts as Parquet but has no footer after {len(data):,} bytes: a truncated upload?"
    else:
        cause = "its footer or pages are corrupt"
    return f"{uri} is not readable Parquet: {cause} ({exc})"


class MalformedPartitionError(ValueError):
    """A partition exists but cannot be read as Parquet."""
