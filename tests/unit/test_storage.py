import pandas as pd
import pytest

from include.data.storage import (
    LocalStorage,
    MalformedPartitionError,
    ObjectExistsError,
    get_storage,
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
