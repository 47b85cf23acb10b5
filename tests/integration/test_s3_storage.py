"""The storage layer on S3 through boto3, against a real S3 endpoint on loopback (moto's server)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import requests

from include.config import get_settings
from include.data import Partition, land_partition, list_validated
from include.stack import free_port
from include.storage import ObjectExistsError, S3Storage, get_storage
from include.validate import validate_partition

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(60):
        try:
            requests.get(url, timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import boto3

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LOOP_S3_ENDPOINT_URL": s3_endpoint,
        "LOOP_STORAGE_URI": "s3://loop-test/zones",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if "loop-test" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="loop-test")
    yield get_storage()
    get_settings.cache_clear()


def test_s3_roundtrip_listing_and_create_only(s3):
    assert isinstance(s3, S3Storage)
    uri = s3.write_bytes("a/b.bin", b"one", create_only=True)
    assert uri == "s3://loop-test/zones/a/b.bin"
    assert s3.exists("a/b.bin") and not s3.exists("a/missing")
    with pytest.raises(ObjectExistsError, match="refusing to overwrite s3://loop-test/zones/a/b.bin"):
        s3.write_bytes("a/b.bin", b"two", create_only=True)
    assert s3.read_bytes("a/b.bin") == b"one"
    s3.write_bytes("a/c.bin", b"3")
    assert s3.list("a/") == ["a/b.bin", "a/c.bin"]
    with pytest.raises(FileNotFoundError, match="s3://loop-test/zones/nope"):
        s3.read_bytes("nope")


def test_the_data_gate_runs_unchanged_on_s3(s3, flights):
    start = datetime(2013, 8, 6, tzinfo=ZoneInfo("America/New_York"))
    p = Partition("flights", start, start + timedelta(weeks=1))
    assert land_partition(flights, p, replay=True).startswith("s3://loop-test/zones/landing/")
    record = validate_partition(flights, p, max_bad_row_share=0.01)
    assert record["validated_uri"] == f"s3://loop-test/zones/{p.validated_key}"
    assert [r["partition"] for r in list_validated("flights")] == [p.id]
