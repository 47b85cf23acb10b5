"""One interface over the data zones: a local directory by default, S3 through boto3.

Keys are relative, `/`-separated paths such as `landing/flights/dt=2013-01-07/part.parquet`.
Writes are atomic on both backends (temp file + rename locally; a single PUT on S3), so a reader
never sees half a file. `create_only=True` refuses to replace an existing object: zones that
must never be rewritten (landing, quarantine) write that way.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from include.settings import get_settings

if TYPE_CHECKING:
    import pandas as pd


class ObjectExistsError(FileExistsError):
    """Raised by `create_only` writes when the key already holds an object."""


def atomic_write(path: Path, data: bytes, *, create_only: bool = False, tmp_dir: Path | None = None) -> None:
    """Write `data` to `path` so that a reader sees the old content or the new, never a part:
    a temporary file beside it (a unique name: concurrent writers never share one), fsynced, then
    renamed over `path`. `create_only` links instead of renaming, which fails if `path` exists
    (`ObjectExistsError`). `tmp_dir` (same filesystem) keeps the temporary file out of a watched
    directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str: ...
    def list(self, prefix: str) -> list[str]: ...


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

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object at {path}")
        return path.read_bytes()

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        path = self._path(key)
        atomic_write(path, data, create_only=create_only)
        return f"file://{path}"

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

    @property
    def _client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"no object at {self.uri(key)}") from None
            raise
        return obj["Body"].read()

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> str:
        from botocore.exceptions import ClientError

        extra = {"IfNoneMatch": "*"} if create_only else {}
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise ObjectExistsError(f"refusing to overwrite {self.uri(key)}") from None
            raise
        return self.uri(key)

    def list(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)


def get_storage(uri: str | None = None) -> Storage:
    """The storage behind `uri` (default: LOOP_STORAGE_URI)."""
    settings = get_settings()
    uri = uri or settings.storage_uri
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"LOOP_STORAGE_URI={uri!r} names no bucket")
        return S3Storage(bucket=bucket, prefix=prefix.strip("/"), endpoint_url=settings.s3_endpoint_url)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/prefix")
    return LocalStorage(root=Path(uri.removeprefix("file://")))


def write_parquet(storage: Storage, key: str, df: pd.DataFrame, *, create_only: bool = False) -> str:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return storage.write_bytes(key, buf.getvalue(), create_only=create_only)


def read_parquet(storage: Storage, key: str) -> pd.DataFrame:
    """Read a Parquet object; a file that is not valid Parquet raises `MalformedPartitionError`."""
    return parse_parquet(storage.read_bytes(key), storage.uri(key))


def parse_parquet(data: bytes, uri: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise MalformedPartitionError(f"{uri} is not readable Parquet: {exc}") from exc


class MalformedPartitionError(ValueError):
    """A partition exists but cannot be read as Parquet."""
