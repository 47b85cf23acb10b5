"""A full disk while writing the data zones: the write fails naming the file, leaves no partial or
temporary file, and the previous content stays as it was.

No root here, so no tiny filesystem to fill (the only tmpfs, /dev/shm, is as large as memory).
The writer runs in a child process whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes
every write past it fail with EFBIG, through the same code path as ENOSPC: a failed write()."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from include.data.partitions import Partition, land_partition, read_json, sha256
from include.data.storage import get_storage

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2013, 4, 2, tzinfo=ZoneInfo("America/New_York"))
PARTITION = Partition("flights", START, START + timedelta(weeks=1))

CHILD = """
import json, resource, signal, sys
from datetime import datetime
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from include.data.partitions import Partition, land_partition
from include.data.storage import get_storage
from include.usecases import get_usecase
p = Partition("flights", datetime.fromisoformat(sys.argv[3]), datetime.fromisoformat(sys.argv[4]))
try:
    if sys.argv[1] == "overwrite":
        get_storage().write_bytes("validated/flights/state.json", b"x" * (4 * limit))
    elif sys.argv[1] == "land":
        land_partition(get_usecase("flights"), p, replay=True)
    else:
        from include.data.gate import validate_partition
        validate_partition(get_usecase("flights"), p, max_bad_row_share=0.01)
    print(json.dumps({"error": None}))
except OSError as exc:
    print(json.dumps({"error": str(exc), "errno": exc.errno}))
"""


def write_with_full_disk(action: str, limit: int) -> dict:
    """Run `action` in a child whose files cannot grow past `limit` bytes; returns the error it met."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    args = [action, str(limit), PARTITION.start.isoformat(), PARTITION.end.isoformat()]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_leaves_the_previous_content_and_no_partial_file(storage_root):
    storage = get_storage()
    storage.write_bytes("validated/flights/state.json", b'{"old": true}')
    outcome = write_with_full_disk("overwrite", limit=64 * 1024)
    assert outcome["errno"] == errno.EFBIG
    assert (
        str(storage_root / "validated/flights/state.json") in outcome["error"]
        and "previous content is unchanged" in outcome["error"]
    )
    assert storage.read_bytes("validated/flights/state.json") == b'{"old": true}'
    assert leftovers(storage_root) == []


def test_a_landing_interrupted_by_a_full_disk_leaves_no_landing_file_and_lands_after(storage_root, flights):
    outcome = write_with_full_disk("land", limit=64 * 1024)
    assert outcome["errno"] == errno.EFBIG and PARTITION.landing_key in outcome["error"]
    # a partial landing file would be kept forever as the delivery: there must be none
    assert not get_storage().exists(PARTITION.landing_key) and leftovers(storage_root) == []
    land_partition(flights, PARTITION, replay=True)  # space is back: the interval lands whole
    assert len(get_storage().read_bytes(PARTITION.landing_key)) > 64 * 1024


@pytest.mark.slow  # the child imports GX
def test_a_validation_interrupted_by_a_full_disk_publishes_nothing_and_passes_after(storage_root, flights):
    from include.data.gate import validate_partition

    storage = get_storage()
    land_partition(flights, PARTITION, replay=True)
    landed = storage.read_bytes(PARTITION.landing_key)
    outcome = write_with_full_disk("validate", limit=len(landed) // 4)  # the validated rows do not fit
    assert outcome["errno"] == errno.EFBIG and PARTITION.validated_key in outcome["error"]
    assert not storage.exists(PARTITION.validation_key) and not storage.exists(PARTITION.validated_key)
    assert storage.read_bytes(PARTITION.landing_key) == landed and leftovers(storage_root) == []
    record = validate_partition(flights, PARTITION, max_bad_row_share=0.01)
    assert record["status"] == "passed" and record["landing_sha256"] == sha256(landed)
    assert read_json(storage, PARTITION.validation_key) == record
