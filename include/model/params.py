"""The knobs of one training run, defined once: the trainer validates them with this model, and the
`train` DAG's form is generated from its JSON schema (bounds, titles, descriptions included)."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from include.settings import default

PLAIN_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Free text of a form (a reason, a URI): any character but the control ones other than tab and
newline (a NUL byte that PostgreSQL's JSON refuses, a bell, an ANSI escape forging a log line)."""
XGB_FIELDS = ("n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight")


class TrainParams(BaseModel):
    """Per-run knobs of `train`; unknown keys (other conf of a DAG run) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    window_weeks: int = Field(
        default("train_window_weeks"),
        ge=2,
        le=104,
        title="Training window (weeks)",
        description="Validated partitions this far back from the newest.",
    )
    eval_partitions: int = Field(
        default("eval_partitions"),
        ge=1,
        le=8,
        title="Evaluation partitions",
        description="Newest partitions held out for evaluation.",
    )
    as_of: date | None = Field(
        None,
        title="As of (optional)",
        description="Train as if this date were today: use partitions starting on or before it.",
    )
    n_estimators: int = Field(300, ge=1, le=5000, title="Trees")
    max_depth: int = Field(6, ge=1, le=16, title="Max depth")
    learning_rate: float = Field(0.1, gt=0, le=1, title="Learning rate")
    subsample: float = Field(0.9, gt=0, le=1, title="Row subsample")
    colsample_bytree: float = Field(0.8, gt=0, le=1, title="Column subsample")
    min_child_weight: float = Field(1.0, ge=0, le=1000, title="Min child weight")
    distributed: bool = Field(
        False,
        title="Train on Dask",
        description="Train with xgboost.dask on the cluster at LOOP_DASK_ADDRESS whatever the window's size "
        "(windows of LOOP_DASK_MIN_ROWS rows or more go there anyway).",
    )
    reason: str | None = Field(
        None,
        max_length=500,
        pattern=PLAIN_TEXT,
        title="Reason (optional)",
        description="Why this run: recorded on the MLflow run (e.g. 'alert 1234: drift on temp').",
    )
    report_uri: str | None = Field(
        None,
        max_length=1000,
        pattern=PLAIN_TEXT,
        title="Monitoring report (optional)",
        description="Set by the monitor when it requests retraining: the drift/decay report behind the request.",
    )

    @classmethod
    def from_mapping(cls, values: dict) -> TrainParams:
        return cls.model_validate(values)

    def xgb_params(self) -> dict:
        return {k: getattr(self, k) for k in XGB_FIELDS}


def form_defaults(settings) -> dict:
    """The knobs whose default the deployment sets (LOOP_TRAIN_WINDOW_WEEKS, LOOP_EVAL_PARTITIONS):
    what the `train` form starts from, and what the backtest trains with."""
    return {"window_weeks": settings.train_window_weeks, "eval_partitions": settings.eval_partitions}
