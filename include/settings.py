"""One settings object, built from the environment.

Every knob has a documented default that runs the embedded demo (local files, SQLite, loopback
MLflow). Production changes environment variables only; see `.env.example`. Reading settings has
no side effects: no directories are created, nothing is logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import cache
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _parsed(name: str, default: object, parse: Callable[[str], T], expected: str) -> T:
    raw = _env(name, str(default))
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {expected}") from None


def _float(name: str, default: float) -> float:
    return _parsed(name, default, float, "a number")


def _int(name: str, default: int) -> int:
    return _parsed(name, default, int, "a whole number")


def _date(name: str, default: str) -> date:
    return _parsed(name, default, date.fromisoformat, "an ISO date (YYYY-MM-DD)")


def _two_ints(raw: str) -> tuple[int, int]:
    a, b = (int(x) for x in raw.split(","))
    if a == b:
        raise ValueError(raw)
    return a, b


def _percent_steps(raw: str) -> tuple[int, ...]:
    steps = tuple(int(x) for x in raw.split(","))
    if not steps or steps[-1] != 100 or any(b <= a for a, b in zip((0, *steps), steps, strict=False)):
        raise ValueError(raw)
    return steps


@dataclass(frozen=True)
class Settings:
    """Settings of the loop. Field docs name the environment variable that sets each one."""

    state_dir: Path
    """LOOP_STATE_DIR: where the embedded runtime keeps its state (default `.state/`)."""
    storage_uri: str
    """LOOP_STORAGE_URI: root of the data zones: a local path or `s3://bucket/prefix`."""
    s3_endpoint_url: str
    """LOOP_S3_ENDPOINT_URL: S3 endpoint for MinIO or a moto server; empty for AWS."""
    usecase: str
    """LOOP_USECASE: module in `include.usecases` that defines the data and the model task."""
    start_date: date
    """LOOP_START_DATE: first data interval the ingest DAG schedules."""
    end_date: date
    """LOOP_END_DATE: last day the ingest DAG schedules (the demo stops after a few months)."""
    replay: bool
    """LOOP_REPLAY: 1 to land partitions from the use case's replay source when missing."""
    mlflow_tracking_uri: str
    """MLFLOW_TRACKING_URI: the tracking server (MLflow's own variable)."""
    model_name: str
    """LOOP_MODEL_NAME: registered model name (default: `<usecase>-delay` style from use case)."""
    max_bad_row_share: float
    """LOOP_MAX_BAD_ROW_SHARE: above this share of bad rows the whole batch is quarantined."""
    ingest_max_active_runs: int
    """LOOP_INGEST_MAX_ACTIVE_RUNS: intervals the ingest DAG validates at once during a catch-up."""
    train_window_weeks: int
    """LOOP_TRAIN_WINDOW_WEEKS: default rolling window of validated partitions for training."""
    eval_partitions: int
    """LOOP_EVAL_PARTITIONS: newest partitions held out as the evaluation slice."""
    min_train_partitions: int
    """LOOP_MIN_TRAIN_PARTITIONS: fewer validated partitions than this and training is skipped."""
    gate_metric: str
    """LOOP_GATE_METRIC: metric the champion gate compares (higher is better)."""
    gate_margin: float
    """LOOP_GATE_MARGIN: the challenger must beat the champion by at least this much."""
    gate_slice_tolerance: float
    """LOOP_GATE_SLICE_TOLERANCE: no slice may drop by more than this against the champion."""
    gate_min_slice_rows: int
    """LOOP_GATE_MIN_SLICE_ROWS: smaller slices are reported but not gated (too noisy)."""
    gate_floor: float
    """LOOP_GATE_FLOOR: absolute floor of the gate metric for the first champion."""
    operating_threshold: float
    """LOOP_OPERATING_THRESHOLD: score above which a flight is predicted late."""

    timezone: str
    """LOOP_TIMEZONE: the timezone data intervals are cut in (midnight to midnight there)."""

    bentoml_home: Path
    """BENTOML_HOME: BentoML's model and bento stores (BentoML's own variable; default under the state dir)."""
    serving_host: str
    """LOOP_SERVING_HOST: where Traefik is reached (and, embedded, the interface it listens on)."""
    slot_host: str
    """LOOP_SLOT_HOST: where the slots listen and Traefik reaches them (loopback by default)."""
    serving_queue: str
    """LOOP_SERVING_QUEUE: executor queue of the deploy/rollback tasks: the worker on the host of the slots."""
    serving_port: int
    """LOOP_SERVING_PORT: the serving entry (Traefik), the one address clients use."""
    traefik_metrics_port: int
    """LOOP_TRAEFIK_METRICS_PORT: Traefik's Prometheus metrics and ping (never the Airflow port)."""
    slot_ports: tuple[int, int]
    """LOOP_SLOT_PORTS: ports of the blue and green slots, `blue,green`."""
    slot_workers: int
    """LOOP_SLOT_WORKERS: BentoML worker processes per slot."""
    inference_log: bool
    """LOOP_INFERENCE_LOG: 1 to log every prediction (the monitor's input); 0 turns it off."""
    canary_steps: tuple[int, ...]
    """LOOP_CANARY_STEPS: traffic percentages the new slot gets in turn, ending at 100."""
    canary_bake_seconds: float
    """LOOP_CANARY_BAKE_SECONDS: how long each canary step is watched before the next."""
    canary_check_seconds: float
    """LOOP_CANARY_CHECK_SECONDS: how often the new slot's metrics are checked during the bake."""
    canary_max_error_rate: float
    """LOOP_CANARY_MAX_ERROR_RATE: share of 5xx answers from the new slot that triggers a rollback."""
    canary_max_latency_ms: float
    """LOOP_CANARY_MAX_LATENCY_MS: mean latency of the new slot (ms) that triggers a rollback."""
    canary_min_requests: int
    """LOOP_CANARY_MIN_REQUESTS: answers needed in a check before the error rate is judged."""
    golden_rows: int
    """LOOP_GOLDEN_ROWS: records of the infra validation's golden set."""
    golden_latency_ms: float
    """LOOP_GOLDEN_LATENCY_MS: p99 budget (ms) of one golden request sent straight to the new slot."""

    alert_email: str
    """LOOP_ALERT_EMAIL: where alerts are mailed too (empty: no mail)."""
    alert_smtp_conn_id: str
    """LOOP_ALERT_SMTP_CONN_ID: the Airflow connection (SMTP) those mails go through."""
    alert_http_conn_id: str
    """LOOP_ALERT_HTTP_CONN_ID: an Airflow HTTP connection every alert is POSTed to as JSON (empty: none)."""
    alert_http_endpoint: str
    """LOOP_ALERT_HTTP_ENDPOINT: the path on that connection's host the alerts are POSTed to."""
    alert_slack_conn_id: str
    """LOOP_ALERT_SLACK_CONN_ID: an Airflow Slack incoming-webhook connection for alerts (empty: none)."""
    webhook_token: str
    """LOOP_WEBHOOK_TOKEN: bearer token the alert webhook (plugins/alert_webhook.py) requires (empty: webhook off)."""
    webhook_dags: tuple[str, ...]
    """LOOP_WEBHOOK_DAGS: DAGs an alert may start through the webhook (the alert names one in its `dag_id` label)."""

    drift_feature_psi: float
    """LOOP_DRIFT_FEATURE_PSI: a feature drifts when its PSI against the reference is above this."""
    drift_min_features: int
    """LOOP_DRIFT_MIN_FEATURES: drifted features needed before drift asks for retraining."""
    drift_prediction_psi: float
    """LOOP_DRIFT_PREDICTION_PSI: PSI of the score distribution that counts as prediction drift."""
    decay_margin: float
    """LOOP_DECAY_MARGIN: drop of the live ROC AUC below the model's evaluation number that counts as decay."""
    decay_min_labelled: int
    """LOOP_DECAY_MIN_LABELLED: labelled predictions a window needs before decay is judged."""
    retrain_cooldown_hours: float
    """LOOP_RETRAIN_COOLDOWN_HOURS: no retrain request this soon after the last training."""
    retrain_max_per_day: int
    """LOOP_RETRAIN_MAX_PER_DAY: retrain requests per 24 hours, at most."""
    retrain_on: str
    """LOOP_RETRAIN_ON: `data` retrains on every validated partition (and on the monitor's requests);
    `drift` never retrains on new data alone: the monitor asks (the first model, drift, decay),
    besides the weekly schedule and manual runs."""

    @property
    def start_datetime(self) -> datetime:
        return datetime.combine(self.start_date, time(), ZoneInfo(self.timezone))

    @property
    def end_datetime(self) -> datetime:
        return datetime.combine(self.end_date, time(23, 59, 59), ZoneInfo(self.timezone))


@cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    state_dir = Path(_env("LOOP_STATE_DIR", str(PROJECT_ROOT / ".state"))).resolve()
    settings = Settings(
        state_dir=state_dir,
        storage_uri=_env("LOOP_STORAGE_URI", str(state_dir / "data")),
        s3_endpoint_url=_env("LOOP_S3_ENDPOINT_URL", ""),
        usecase=_env("LOOP_USECASE", "flights"),
        start_date=_date("LOOP_START_DATE", "2013-01-01"),
        end_date=_date("LOOP_END_DATE", "2013-12-31"),
        replay=_env("LOOP_REPLAY", "1") == "1",
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        model_name=_env("LOOP_MODEL_NAME", ""),
        max_bad_row_share=_float("LOOP_MAX_BAD_ROW_SHARE", 0.01),
        ingest_max_active_runs=_int("LOOP_INGEST_MAX_ACTIVE_RUNS", 2),
        train_window_weeks=_int("LOOP_TRAIN_WINDOW_WEEKS", 8),
        eval_partitions=_int("LOOP_EVAL_PARTITIONS", 1),
        min_train_partitions=_int("LOOP_MIN_TRAIN_PARTITIONS", 3),
        gate_metric=_env("LOOP_GATE_METRIC", "roc_auc"),
        gate_margin=_float("LOOP_GATE_MARGIN", 0.002),
        gate_slice_tolerance=_float("LOOP_GATE_SLICE_TOLERANCE", 0.03),
        gate_min_slice_rows=_int("LOOP_GATE_MIN_SLICE_ROWS", 300),
        gate_floor=_float("LOOP_GATE_FLOOR", 0.60),
        operating_threshold=_float("LOOP_OPERATING_THRESHOLD", 0.5),
        timezone=_env("LOOP_TIMEZONE", "America/New_York"),
        bentoml_home=Path(_env("BENTOML_HOME", str(state_dir / "bentoml"))).resolve(),
        serving_host=_env("LOOP_SERVING_HOST", "127.0.0.1"),
        slot_host=_env("LOOP_SLOT_HOST", "127.0.0.1"),
        serving_queue=_env("LOOP_SERVING_QUEUE", "default"),
        serving_port=_int("LOOP_SERVING_PORT", 8000),
        traefik_metrics_port=_int("LOOP_TRAEFIK_METRICS_PORT", 8082),
        slot_ports=_parsed("LOOP_SLOT_PORTS", "3001,3002", _two_ints, "two ports, `blue,green`"),
        slot_workers=_int("LOOP_SLOT_WORKERS", 1),
        inference_log=_env("LOOP_INFERENCE_LOG", "1") == "1",
        canary_steps=_parsed("LOOP_CANARY_STEPS", "10,50,100", _percent_steps, "rising percentages ending at 100"),
        canary_bake_seconds=_float("LOOP_CANARY_BAKE_SECONDS", 30),
        canary_check_seconds=_float("LOOP_CANARY_CHECK_SECONDS", 2),
        canary_max_error_rate=_float("LOOP_CANARY_MAX_ERROR_RATE", 0.02),
        canary_max_latency_ms=_float("LOOP_CANARY_MAX_LATENCY_MS", 250),
        canary_min_requests=_int("LOOP_CANARY_MIN_REQUESTS", 20),
        golden_rows=_int("LOOP_GOLDEN_ROWS", 200),
        golden_latency_ms=_float("LOOP_GOLDEN_LATENCY_MS", 200),
        alert_email=_env("LOOP_ALERT_EMAIL", ""),
        alert_smtp_conn_id=_env("LOOP_ALERT_SMTP_CONN_ID", "smtp_default"),
        alert_http_conn_id=_env("LOOP_ALERT_HTTP_CONN_ID", ""),
        alert_http_endpoint=_env("LOOP_ALERT_HTTP_ENDPOINT", "/"),
        alert_slack_conn_id=_env("LOOP_ALERT_SLACK_CONN_ID", ""),
        webhook_token=_env("LOOP_WEBHOOK_TOKEN", ""),
        webhook_dags=tuple(d.strip() for d in _env("LOOP_WEBHOOK_DAGS", "train,monitor,ingest_validate").split(",") if d.strip()),
        drift_feature_psi=_float("LOOP_DRIFT_FEATURE_PSI", 0.25),
        drift_min_features=_int("LOOP_DRIFT_MIN_FEATURES", 3),
        drift_prediction_psi=_float("LOOP_DRIFT_PREDICTION_PSI", 0.2),
        decay_margin=_float("LOOP_DECAY_MARGIN", 0.03),
        decay_min_labelled=_int("LOOP_DECAY_MIN_LABELLED", 2000),
        retrain_cooldown_hours=_float("LOOP_RETRAIN_COOLDOWN_HOURS", 24),
        retrain_max_per_day=_int("LOOP_RETRAIN_MAX_PER_DAY", 2),
        retrain_on=_env("LOOP_RETRAIN_ON", "data"),
    )
    if not 0 <= settings.max_bad_row_share < 1:
        raise ValueError(f"LOOP_MAX_BAD_ROW_SHARE={settings.max_bad_row_share} must be in [0, 1)")
    if settings.retrain_on not in ("data", "drift"):
        raise ValueError(f"LOOP_RETRAIN_ON={settings.retrain_on!r} must be `data` or `drift`")
    if settings.end_date < settings.start_date:
        raise ValueError(f"LOOP_END_DATE {settings.end_date} is before LOOP_START_DATE {settings.start_date}")
    return settings
