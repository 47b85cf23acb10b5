import io

import pandas as pd
import pytest

from include.data.storage import (
    LocalStorage,
    MalformedPartitionError,
    ObjectExistsError,
    ObjectTooLargeError,
    get_storage,
    parquet_metadata,
    parse_parquet,
    read_parquet,
    write_parquet,
)


def test_local_roundtrip_and_listing(tmp_path):
    s = LocalStorage(tmp_path)
    s.write_bytes("a/b/c.bin", b"123")
    s.write_bytes("a/d.bin", b"4")
    assert s.read_bytes("a/b/c.bin") == b"123"
    assert s.list("a/") == ["a/b/c.bin", "a/d.bin"]
    assert s.uri("a/d.bin") == f"file://{tmp_path}/a/d.bin"
    assert not list(tmp_path.rglob("*.tmp")), "temp files must not be left behind"


def test_create_only_never_replaces_an_object(tmp_path):
    s = LocalStorage(tmp_path)
    s.write_bytes("landing/x", b"original", create_only=True)
    with pytest.raises(ObjectExistsError, match="refusing to overwrite"):
        s.write_bytes("landing/x", b"new", create_only=True)
    assert s.read_bytes("landing/x") == b"original"


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(ValueError, match="escapes the storage root"):
        LocalStorage(tmp_path / "root").write_bytes("../outside", b"x")


def test_missing_object_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        LocalStorage(tmp_path).read_bytes("nope")


def test_malformed_parquet_is_named(tmp_path):
    s = LocalStorage(tmp_path)
    write_parquet(s, "ok.parquet", pd.DataFrame({"a": [1, 2]}))
    assert read_parquet(s, "ok.parquet")["a"].tolist() == [1, 2]
    s.write_bytes("bad.parquet", s.read_bytes("ok.parquet")[:20])
    with pytest.raises(MalformedPartitionError, match="bad.parquet is not readable Parquet"):
        read_parquet(s, "bad.parquet")


@pytest.mark.parametrize("uri,message", [("s3://", "names no bucket"), ("gs://bucket/x", "unsupported storage URI")])
def test_bad_storage_uris_are_rejected(uri, message):
    with pytest.raises(ValueError, match=message):
        get_storage(uri)


def test_s3_uri_selects_s3_storage():
    s = get_storage("s3://bucket/some/prefix")
    assert s.uri("landing/x") == "s3://bucket/some/prefix/landing/x"


def test_read_bytes_refuses_an_object_over_max_bytes_unread(tmp_path):
    s = LocalStorage(tmp_path)
    s.write_bytes("landing/x", b"12345")
    assert s.read_bytes("landing/x", max_bytes=5) == b"12345"
    with pytest.raises(ObjectTooLargeError, match=rf"file://{tmp_path}/landing/x is 5 bytes, more than the 4 allowed: not read"):
        s.read_bytes("landing/x", max_bytes=4)


@pytest.mark.parametrize(
    "make,cause",
    [
        (lambda ok: b"", r"the file is empty \(0 bytes\)"),
        (lambda ok: b"year,month,day\n2013,1,1\n", r"it starts with text b'year,month,day\\n2013,1,1\\n'.*a CSV or JSON file\?"),
        (lambda ok: ok[: len(ok) // 2], r"it starts as Parquet but has no footer after [\d,]+ bytes: a truncated upload\?"),
        (lambda ok: b"\x00\xff" * 10, "no Parquet magic bytes at its start"),
    ],
)
def test_an_unreadable_file_is_named_with_its_likely_cause(make, cause):
    ok = io.BytesIO()
    pd.DataFrame({"a": range(100)}).to_parquet(ok, index=False)
    data = make(ok.getvalue())
    for read in (parse_parquet, parquet_metadata):
        with pytest.raises(MalformedPartitionError, match=rf"s3://b/landing/x is not readable Parquet: {cause}"):
            read(data, "s3://b/landing/x")


def test_s3_storage_gets_bounded_timeouts_and_retries_from_the_settings(monkeypatch):
    from include.settings import get_settings

    monkeypatch.setenv("LOOP_S3_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("LOOP_S3_MAX_ATTEMPTS", "4")
    get_settings.cache_clear()
    try:
        s = get_storage("s3://bucket/prefix")
    finally:
        get_settings.cache_clear()
    assert (s.timeout_seconds, s.max_attempts) == (2.5, 4)
    config = s._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2.5, 2.5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}  # the first request included
