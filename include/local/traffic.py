"""The traffic replayer: a data interval's records sent to the serving entry, as clients would.

Each client is a thread with its own keep-alive HTTP session, sending one record per request to
`/predict` (or `batch_size` records to `/predict_batch`). Every request's outcome is kept (start
time, latency, HTTP status or 0 for a connection error, the version that answered), so the demo
can report what users saw and the rollout tests can count failed requests around a switch.

    python -m include.local.traffic 2013-07-01 2013-07-08 --clients 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import requests

from include.serving.schema import request_bodies

if TYPE_CHECKING:
    from include.usecases import UseCase


@dataclass(frozen=True)
class Outcome:
    started: float
    """Wall-clock time the request was sent."""
    latency_ms: float
    status: int
    """HTTP status; 0 when no response came back (connection refused or reset, timeout)."""
    version: str | None


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def summary(self) -> dict:
        import numpy as np

        ok = [o.latency_ms for o in self.outcomes if o.status == 200]
        span = (max(o.started for o in self.outcomes) - min(o.started for o in self.outcomes)) if self.outcomes else 0
        return {
            "requests": len(self.outcomes),
            "failed": len(self.failed),
            "statuses": dict(Counter(o.status for o in self.outcomes)),
            "versions": dict(Counter(o.version for o in self.outcomes if o.version)),
            "p50_ms": round(float(np.percentile(ok, 50)), 2) if ok else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 2) if ok else None,
            "requests_per_s": round(len(self.outcomes) / span, 1) if span else None,
        }


def interval_records(usecase: UseCase, start: datetime, end: datetime) -> list[dict]:
    """The records of [start, end) from the use case's source, as request bodies."""
    df = usecase.load_interval(start, end)
    if df.empty:
        raise ValueError(f"no {usecase.name} records between {start} and {end}")
    return request_bodies(usecase, df)


def replay(
    url: str,
    records: list[dict],
    *,
    clients: int = 4,
    batch_size: int = 1,
    limit: int | None = None,
    loop: bool = False,
    stop: threading.Event | None = None,
    timeout: float = 10,
    rate: float | None = None,
    report: Report | None = None,
) -> Report:
    """Send `records` to `url` from `clients` threads until they are all sent (or `limit`
    requests, or `stop` is set; with `loop` the records repeat). `rate` caps the requests per
    second of all clients together (None: as fast as the service answers). Outcomes are appended
    to `report` (a new one by default) as they come, so a caller can watch a replay in progress."""
    report = Report() if report is None else report
    source = itertools.cycle(records) if loop else iter(records)
    lock = threading.Lock()
    stop = stop or threading.Event()
    sent = itertools.count()
    path = "/predict" if batch_size == 1 else "/predict_batch"

    def take() -> list[dict] | None:
        with lock:
            if stop.is_set() or (limit is not None and next(sent) >= limit):
                return None
            chunk = list(itertools.islice(source, batch_size))
        return chunk or None

    def client():
        with requests.Session() as http:
            while (chunk := take()) is not None:
                body = chunk[0] if batch_size == 1 else {"records": chunk}
                t0 = time.time()
                try:
                    r = http.post(url + path, json=body, timeout=timeout)
                    status = r.status_code
                    version = (r.json() if batch_size == 1 else r.json()[0])["model_version"] if status == 200 else None
                except requests.RequestException:
                    status, version = 0, None
                report.outcomes.append(Outcome(t0, (time.time() - t0) * 1000, status, version))
                if rate:
                    stop.wait(max(0.0, clients / rate - (time.time() - t0)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report


def main(argv: list[str] | None = None) -> int:
    from zoneinfo import ZoneInfo

    from include.settings import get_settings
    from include.usecases import get_usecase

    settings = get_settings()
    parser = argparse.ArgumentParser(description="Replay a data interval's records against the serving entry.")
    parser.add_argument("start", type=str, help="first day, YYYY-MM-DD (in the calendar's timezone, LOOP_TIMEZONE)")
    parser.add_argument("end", type=str, help="day after the last, YYYY-MM-DD")
    parser.add_argument("--url", default=f"http://{settings.serving_host}:{settings.serving_port}")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="requests per second, all clients together")
    args = parser.parse_args(argv)
    usecase = get_usecase()
    tz = ZoneInfo(usecase.calendar.timezone)
    start = datetime.fromisoformat(args.start).replace(tzinfo=tz)
    end = datetime.fromisoformat(args.end).replace(tzinfo=tz)
    records = interval_records(usecase, start, end)
    print(f"replaying {len(records)} records of {args.start} … {args.end} to {args.url} with {args.clients} clients")
    report = replay(args.url, records, clients=args.clients, batch_size=args.batch_size, limit=args.limit, rate=args.rate)
    print(json.dumps(report.summary(), indent=2))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
