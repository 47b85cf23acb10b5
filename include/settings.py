"""One settings object, read from the environment and the project's `.env` file by pydantic-settings.

Every knob has a documented default that runs the embedded demo (local files, SQLite, loopback
MLflow); production changes environment variables only. The variable of a field is `LOOP_` plus
its name in capitals, except where a tool has its own (`MLFLOW_TRACKING_URI`, `BENTOML_HOME`). An
empty variable means its default. A wrong value fails with the variable, the value and what it
accepts. Reading settings has no side effects: no directories are created, nothing is logged.

`.env.example` and the configuration reference (docs/configuration.md) are generated from this class
(`make settings-docs`); a test fails when they disagree with it.
"""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _csv(value):
    return tuple(x.strip() for x in value.split(",") if x.strip()) if isinstance(value, str) else value


class Settings(BaseSettings):
    """Settings of the loop; each field's description is its documentation."""

    model_config = SettingsConfigDict(
        env_prefix="LOOP_",
        env_file=PROJECT_ROOT / ".env",
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
    )

    # Runtime and storage
    state_dir: Path = Field(
        PROJECT_ROOT / ".state", description="Where the embedded runtime keeps its state (Airflow DB, MLflow store, logs)."
    )
    storage_uri: str = Field(
        "", description="Root of the data zones: a local path or `s3://bucket/prefix` (default: `<state dir>/data`)."
    )
    s3_endpoint_url: str = Field("", description="S3 endpoint for MinIO or a moto server; empty for AWS.")
    s3_timeout_seconds: float = Field(
        10,
        gt=0,
        description="Connect and read timeout of one S3 request (a stalled endpoint fails fast, it does not hang the task).",
    )
    s3_max_attempts: int = Field(
        3,
        ge=1,
        description="Attempts per S3 request (boto3's standard retries: exponential backoff with jitter) before the storage counts as unavailable.",
    )
    airflow_port: int = Field(8080, ge=1, le=65535, description="Port of the embedded Airflow API server and UI.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the embedded MLflow server.")
    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5000",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI"),
        description="The MLflow tracking server (MLflow's own variable).",
    )
    # MLflow's own retry variables. The defaults bound one call to a server that is down: 3 retries
    # after 0, 4 and 8 s (~12 s) when it refuses connections, plus 4 timeouts of 10 s (~52 s) when it hangs.
    mlflow_http_timeout_seconds: int = Field(
        10,
        gt=0,
        validation_alias=AliasChoices("MLFLOW_HTTP_REQUEST_TIMEOUT"),
        description="Connect and read timeout of one MLflow HTTP request: a hung tracking server fails the call, it does not stall the task (MLflow's own variable).",
    )
    mlflow_http_max_retries: int = Field(
        3,
        ge=0,
        le=10,
        validation_alias=AliasChoices("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
        description="Retries of a failed MLflow HTTP request (refused, timed out, 5xx) before the server counts as unreachable (MLflow's own variable).",
    )
    mlflow_http_backoff_factor: int = Field(
        2,
        ge=0,
        le=120,
        validation_alias=AliasChoices("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"),
        description="Exponential backoff between those retries: 0, 2×, 4× … this many seconds (MLflow's own variable).",
    )
    git_commit: str = Field(
        "",
        description="The code's git commit, recorded with every model (the image sets it; empty: `git rev-parse HEAD` of the checkout).",
    )
    bentoml_home: Path | None = Field(
        None,
        validation_alias=AliasChoices("BENTOML_HOME"),
        description="BentoML's model and bento stores (BentoML's own variable; default: `<state dir>/bentoml`).",
    )

    # The use case and its calendar (the calendar's defaults are the use case's own)
    usecase: str = Field("flights", description="The use case: module `include/usecases/<name>.py`.")
    model_name: str = Field("", description="Registered model name (empty: the use case's own, e.g. `flights-delay`).")
    start_date: date | None = Field(
        None, description="First data interval the ingest DAG schedules (default: the use case's calendar)."
    )
    end_date: date | None = Field(
        None, description="Last day the ingest DAG schedules (default: the use case's calendar; `make demo`: its demo end)."
    )
    timezone: str | None = Field(
        None, description="The timezone data intervals are cut in, midnight to midnight (default: the use case's)."
    )
    replay: bool = Field(
        True, description="1: land missing partitions from the use case's replay source; 0: wait for upstream deliveries."
    )
    ingest_max_active_runs: int = Field(2, ge=1, description="Intervals the ingest DAG validates at once during a catch-up.")

    # Data gate
    max_bad_row_share: float = Field(0.01, ge=0, lt=1, description="Above this share of bad rows the whole batch is quarantined.")
    max_landing_bytes: int = Field(
        1 << 30,
        ge=1,
        description="Landing files larger than this are refused unread: the gate holds a partition in memory (deliver smaller intervals, or raise it).",
    )
    gate_history_partitions: int = Field(
        8,
        ge=0,
        le=52,
        description="Each batch is also held to this many latest validated partitions before it, column by column (missing share, quantiles, values seen, category shares); 0: off.",
    )
    gate_history_min_partitions: int = Field(
        6,
        ge=1,
        description="Fewer validated partitions than this before a batch (the first intervals) and the history checks are left out, saying so (fewer than 6 weeks of 2013 make false quarantines).",
    )

    # Training and the champion gate
    train_window_weeks: int = Field(
        8, ge=2, le=104, description="Default rolling window of validated partitions for training (the form can override it)."
    )
    eval_partitions: int = Field(1, ge=1, le=8, description="Newest partitions held out as the evaluation slice.")
    min_train_partitions: int = Field(3, ge=2, description="Fewer validated partitions than this and training is skipped.")
    refit: bool = Field(
        True,
        description="Once the gate accepts a challenger, fit the same configuration on the whole window, held-out week included, and serve that refit (`include/model/refit.py`); false serves the challenger as judged.",
    )
    dask_address: str = Field(
        "",
        description="Dask scheduler that large trainings run on, e.g. `tcp://dask-scheduler:8786` (empty: no cluster, always single-process).",
    )
    dask_min_rows: int = Field(
        1_000_000,
        ge=1,
        description="Training rows from which training runs on the Dask cluster (the form can ask for it at any size).",
    )
    retrain_on: Literal["data", "drift"] = Field(
        "data",
        description="`data`: retrain on every validated partition; `drift`: only when the monitor asks (first model, drift, decay).",
    )
    gate_metric: Literal["roc_auc", "pr_auc", "precision", "recall", "f1"] = Field(
        "roc_auc", description="Metric the champion gate compares (higher is better)."
    )
    gate_margin: float = Field(
        0.02,
        ge=0,
        description="Non-inferiority margin: a challenger is rejected only when it is worse than the champion by more than this, with the gate's confidence (on 2013 the held-out week's difference between two sound weekly models has a standard deviation of about 0.011, beyond what the week's rows explain).",
    )
    gate_slice_margin: float = Field(
        0.03,
        ge=0,
        description="The same for each slice, the confidence corrected for the number of slices; a slice is judged when its class counts can measure an AUC to within this (Hanley–McNeil), smaller ones are reported.",
    )
    gate_confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1,
        description="Confidence of the gate's two-sided intervals (DeLong for ROC AUC, a paired bootstrap otherwise).",
    )
    gate_floor: float = Field(
        0.60,
        description="Absolute floor of the gate metric: a challenger below it is broken, unless the champion falls below it on the same rows too (a hard week, judged by the comparison).",
    )
    gate_ceiling: float = Field(
        0.98,
        description="Absolute ceiling of the gate metric: a challenger above it on held-out rows is too good to be true (a leak) and rejected.",
    )
    gate_calibration_ratio: float = Field(
        3.0,
        gt=1,
        description="A challenger whose mean score is more than this many times above or below the observed positive rate is broken.",
    )
    gate_abandoned_share: float = Field(
        0.10,
        gt=0,
        le=1,
        description="A challenger that never uses a feature carrying at least this share of the champion's gain is broken (a column gone constant or empty upstream).",
    )
    gate_resolution_ratio: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A challenger whose scores take fewer than this share of the champion's distinct values on the same rows is broken (a model cut short: one tree, a few stumps).",
    )
    operating_threshold: float = Field(0.5, ge=0, le=1, description="Score at or above which the positive class is predicted.")

    # Serving and rollout
    serving_host: str = Field("127.0.0.1", description="Where Traefik is reached (and, embedded, the interface it listens on).")
    slot_host: str = Field("127.0.0.1", description="Where the slots listen and Traefik reaches them.")
    serving_queue: str = Field(
        "default", description="Executor queue of the deploy/rollback tasks: the worker on the host of the slots."
    )
    serving_port: int = Field(8000, ge=1, le=65535, description="The serving entry (Traefik), the one address clients use.")
    traefik_metrics_port: int = Field(
        8082, ge=1, le=65535, description="Traefik's Prometheus metrics, ping and API (never the Airflow port)."
    )
    slot_ports: Annotated[tuple[int, int], NoDecode] = Field(
        (3001, 3002), description="Ports of the blue and green slots, `blue,green`."
    )
    slot_workers: int = Field(1, ge=1, description="BentoML worker processes per slot.")
    inference_log: bool = Field(True, description="1: every prediction goes to the inference log (the monitor's input); 0: off.")
    inference_log_flush_seconds: float = Field(
        60,
        gt=0,
        description="How often a serving worker writes its logged predictions, one part per event day each time (a crash loses at most this much; a clean stop loses nothing).",
    )
    inference_log_max_queued: int = Field(
        200_000,
        ge=1,
        description="Predictions a worker holds for the log (storage slow or down); beyond it new ones are not logged, and counted.",
    )
    inference_log_max_lateness_hours: float | None = Field(
        None,
        gt=0,
        description="A prediction whose event time is this much older than the newest event logged is served but kept out of the log (default: one data interval).",
    )
    serving_max_body_bytes: int = Field(
        2 << 20,
        ge=1024,
        description="Request bodies larger than this are refused with 413, counted as they arrive (a full batch is about 0.5 MB).",
    )
    serving_max_lead_hours: float = Field(
        48, gt=0, description="A request whose event time is further than this after the serving host's clock is refused (400)."
    )
    slot: str = Field("dev", description="Set by the serving runtime in each slot process: `blue` or `green`.")
    slot_fault: str = Field(
        "", description="Chaos testing only, set per slot by the rollout tests: `<errors|slow|skew|unready>[:<n>]`."
    )
    canary_steps: Annotated[tuple[int, ...], NoDecode] = Field(
        (10, 50, 100), description="Traffic percentages the new slot gets in turn, rising and ending at 100."
    )
    canary_bake_seconds: float = Field(30, ge=0, description="How long each canary step is watched before the next.")
    canary_check_seconds: float = Field(2, gt=0, description="How often the new slot's metrics are checked during the bake.")
    canary_max_error_rate: float = Field(
        0.02, ge=0, le=1, description="Share of 5xx answers from the new slot that triggers a rollback."
    )
    canary_max_latency_ms: float = Field(250, gt=0, description="Mean latency of the new slot (ms) that triggers a rollback.")
    canary_min_requests: int = Field(20, ge=1, description="Answers needed in a check before the error rate is judged.")
    rollout_lease_seconds: float = Field(
        3600,
        gt=0,
        description="A rollout's hold on the slots expires this long after its last step (a run that died without releasing it).",
    )
    rollout_lock_wait_seconds: float = Field(
        1800, ge=0, description="How long a deploy or rollback waits for the rollout in progress before it fails."
    )
    guard_interval_seconds: float = Field(
        2, gt=0, description="How often the serving guard checks the live slot, the routing and Traefik."
    )
    guard_unready_seconds: float = Field(
        10, gt=0, description="A live slot whose process runs but does not answer `/readyz` this long is restarted by the guard."
    )
    guard_canary_stale_seconds: float = Field(
        20, gt=0, description="A canary silent this long while traffic is split is taken as dead: the guard sends traffic back."
    )
    golden_rows: int = Field(200, ge=1, description="Records of the infra validation's golden set.")
    golden_latency_ms: float = Field(
        200, gt=0, description="p99 budget (ms) of one golden request sent straight to the new slot."
    )

    # Monitoring and the retrain policy
    monitor_every_minutes: float = Field(
        1440, gt=0, le=10080, description="The periodic check of served traffic (no labels) runs this often (wall clock)."
    )
    monitor_window_days: int = Field(
        7,
        ge=1,
        le=90,
        description="Days of served traffic the periodic check reads, up to the newest logged event (event clock).",
    )
    drift_rule: Literal["attribution", "count"] = Field(
        "attribution",
        description="`attribution`: drift weighed by the model's attributions against noise thresholds, the performance "
        "estimated from scores (CBPE), decay with a confidence interval; `count`: the older fixed-PSI feature count.",
    )
    drift_attribution_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="attribution: share of the model's attributions on features beyond their noise threshold that is drift.",
    )
    estimate_margin: float = Field(
        0.03,
        ge=0,
        description="attribution: drop of the ROC AUC estimated without labels (CBPE) below the evaluation number that asks for retraining.",
    )
    decay_z: float = Field(
        1.645,
        ge=0,
        description="attribution: decay needs the live ROC AUC's upper bound (this many standard errors) below the margin.",
    )
    drift_feature_psi: float = Field(
        0.25, gt=0, description="count: a feature drifts when its PSI against the reference is above this."
    )
    drift_min_features: int = Field(3, ge=1, description="count: drifted features needed before drift asks for retraining.")
    drift_prediction_psi: float = Field(
        0.2, gt=0, description="count: PSI of the score distribution that counts as prediction drift."
    )
    decay_margin: float = Field(
        0.03, ge=0, description="Drop of the live ROC AUC below the model's evaluation number that counts as decay."
    )
    decay_min_labelled: int = Field(200, ge=1, description="Labelled predictions a window needs before decay is judged.")
    retrain_cooldown_hours: float = Field(
        24, ge=0, description="No retrain request this soon after the last training (data time)."
    )
    retrain_max_per_day: int = Field(2, ge=1, description="Retrain requests per 24 hours, at most.")
    max_model_age_days: float = Field(
        42,
        ge=0,
        description="Retrain once the serving model's data ends this many days before the newest data seen, whatever drift says (0: off).",
    )

    # Alerts and the alert webhook
    alert_email: str = Field("", description="Where alerts are mailed too (empty: no mail).")
    alert_smtp_conn_id: str = Field("smtp_default", description="The Airflow connection (SMTP) those mails go through.")
    alert_http_conn_id: str = Field("", description="An Airflow HTTP connection every alert is POSTed to as JSON (empty: none).")
    alert_http_endpoint: str = Field("/", description="The path on that connection's host the alerts are POSTed to.")
    alert_slack_conn_id: str = Field("", description="An Airflow Slack incoming-webhook connection for alerts (empty: none).")
    webhook_token: str = Field(
        "", description="Bearer token the alert webhook requires (empty: the webhook is off; the demo generates one)."
    )
    webhook_dags: Annotated[tuple[str, ...], NoDecode] = Field(
        ("train", "monitor", "ingest_validate"),
        description="DAGs an alert may start through the webhook (its `dag_id` label names one).",
    )
    webhook_rate_per_minute: int = Field(
        60,
        ge=1,
        description="Requests a minute the alert webhook takes from one client, checked before its token; more are answered 429.",
    )

    @field_validator("webhook_dags", mode="before")
    @classmethod
    def _names(cls, value):
        return _csv(value)

    @field_validator("slot_ports", mode="before")
    @classmethod
    def _two_ports(cls, value):
        ports = tuple(int(x) for x in _csv(value))
        if len(ports) != 2 or ports[0] == ports[1]:
            raise ValueError("two different ports, `blue,green`")
        return ports

    @field_validator("canary_steps", mode="before")
    @classmethod
    def _steps(cls, value):
        steps = tuple(int(x) for x in _csv(value))
        if not steps or steps[-1] != 100 or any(b <= a for a, b in zip((0, *steps), steps, strict=False)):
            raise ValueError("rising percentages ending at 100, e.g. `10,50,100`")
        return steps

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value):
        if value is None:
            return value
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA timezone, e.g. `America/New_York`") from None
        return value

    @model_validator(mode="after")
    def _derived(self):
        # Defaults that depend on the state dir; relative paths are taken from the working directory.
        self.state_dir = self.state_dir.resolve()
        self.storage_uri = self.storage_uri or str(self.state_dir / "data")
        self.bentoml_home = (self.bentoml_home or self.state_dir / "bentoml").resolve()
        return self


def variable(name: str) -> str:
    """The environment variable that sets field `name`."""
    alias = Settings.model_fields[name].validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else f"LOOP_{name.upper()}"


# The demo's retraining follows the monitor: new data trains the first model only, then drift or
# decay asks for retraining, at most once per two weeks of data time (the rest is "suppressed"),
# and a model whose data is four weeks old is retrained whatever the signals say (the backtest's
# "loop: as make demo runs it": 14 retrains over 2013, a third of weekly's, for the best mean served
# ROC AUC of the settings tried at that budget).
# The data clock triggers the check of each replayed week's served traffic itself; the periodic
# check also runs on its own clock, every 10 minutes, for as long as the services do. Canary steps
# bake 15 s: 30 requests at the first step's 10% of the clients' 20 requests/s. `make demo` sets
# these (include/local/demo.py); the backtest replays the loop with them too (include/backtest/).
DEMO_SETTINGS = {
    "LOOP_RETRAIN_ON": "drift",
    "LOOP_RETRAIN_COOLDOWN_HOURS": "336",
    "LOOP_MAX_MODEL_AGE_DAYS": "28",
    "LOOP_INGEST_MAX_ACTIVE_RUNS": "1",
    "LOOP_MONITOR_EVERY_MINUTES": "10",
    "LOOP_CANARY_BAKE_SECONDS": "15",
}


def with_overrides(settings: Settings, env: dict[str, str]) -> Settings:
    """`settings` with the variables of `env` (LOOP_<FIELD>: value) applied, validated as the
    environment's would be."""
    fields = {k.removeprefix("LOOP_").lower(): v for k, v in env.items()}
    unknown = sorted(set(fields) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"no such settings: {', '.join(unknown)}")
    return Settings.model_validate(settings.model_dump() | fields)


def default(name: str):
    """The documented default of field `name`: the one declaration the configs built from the
    settings (the retrain policy, the champion gate, the training form) take theirs from."""
    return Settings.model_fields[name].default


_SIGNS = {"Ge": ">=", "Gt": ">", "Le": "<=", "Lt": "<"}


def bounds(name: str) -> str:
    """The range field `name` accepts, e.g. `[>= 0, < 1]`."""
    parts = [
        f"{_SIGNS[type(m).__name__]} {getattr(m, type(m).__name__.lower())}"
        for m in Settings.model_fields[name].metadata
        if type(m).__name__ in _SIGNS
    ]
    return "[" + ", ".join(parts) + "]" if parts else "(any)"


_EXPECTED = {
    "float_parsing": "is not a number",
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "bool_parsing": "is not 1 or 0 (true/false)",
    "date_from_datetime_parsing": "is not an ISO date (YYYY-MM-DD)",
    "date_parsing": "is not an ISO date (YYYY-MM-DD)",
    "literal_error": "is not one of the accepted values",
}


def explain(error: ValidationError) -> str:
    """One line per wrong value: the variable, the value and what it accepts."""
    lines = []
    for e in error.errors():
        field = e["loc"][0] if e["loc"] else None
        if field not in Settings.model_fields:
            lines.append(e["msg"].removeprefix("Value error, "))
            continue
        what = _EXPECTED.get(e["type"]) or f"is not accepted: {e['msg'].removeprefix('Value error, ')}"
        if e["type"] == "literal_error":
            what = f"must be {e['ctx']['expected']}"
        elif e["type"] in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
            what = "must be in " + bounds(field)
        lines.append(f"{variable(field)}={e['input']!r} {what}")
    return "; ".join(lines)


@cache
def get_settings() -> Settings:
    """Settings from the environment (and `.env`), read once per process."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ValueError(f"bad settings: {explain(exc)}") from None
