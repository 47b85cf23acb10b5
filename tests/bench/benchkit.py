"""What the benchmarks share: a state directory of their own, progress lines, and validated weeks
of real flights to train on."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[2]


def isolated_state(prefix: str, model_name: str, **env: str) -> Path:
    """A fresh state directory for this benchmark process, set in the environment before any
    settings are read (never the demo's `.state/`); `env` adds variables."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        {
            "LOOP_STATE_DIR": str(state),
            "LOOP_STORAGE_URI": str(state / "data"),
            "LOOP_MODEL_NAME": model_name,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "GIT_PYTHON_REFRESH": "quiet",
            **env,
        }
    )
    return state


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def validate_flights_weeks(flights, weeks: int) -> None:
    """Land and validate `weeks` weeks of flights from 7 May 2013 (real data through the real gate)."""
    from include.data.gate import validate_partition
    from include.data.partitions import Partition, land_partition

    ny = ZoneInfo("America/New_York")
    for i in range(weeks):
        start = datetime(2013, 5, 7, tzinfo=ny) + timedelta(weeks=i)
        partition = Partition("flights", start, start + timedelta(weeks=1))
        land_partition(flights, partition, replay=True)
        validate_partition(flights, partition, max_bad_row_share=0.01)
