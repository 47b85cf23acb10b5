"""The models and served weeks of a replay, each computed once however many policies ask.

The same window gives the same model (XGBoost with a fixed seed), so models and profiles are cached
by the week their window ends with, and scores and reports by (model, week): the whole replay fits
each window at most once (weekly retraining's windows pay for every policy). Fitted models are also
kept on disk (`--cache`, default `<out>/fits/`, keyed by a digest of exactly what the fit receives
and of the engine's code), so a rerun, after an interruption or a change of the policy, fits
nothing it fitted before; profiles, reports and decisions are always computed afresh.

A model is named by its key (week, refit): the challenger fitted at the end of `week` on its window
less the held-out newest week, or (refit) the same configuration fitted on the whole window, as the
loop serves it once the gate accepts the challenger (`include/model/refit.py`); a refit carries its
challenger's profile and evaluation, as in the loop. `gate` is the loop's champion gate, `decide`, on
the challenger's held-out week, scored by both models.

Each served week is scored: ROC AUC and log loss of the serving model on the week's labelled rows
(rows without a label, such as cancelled flights, are left out), next to CBPE's estimate of the ROC
AUC from the week's scores alone; both are the monitor's report of the week, what the policy reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from include.backtest.figures import finite, fmt, say
from include.backtest.timeline import Week, partition_records
from include.model.dataset import select_partitions
from include.model.gate import GateConfig, GateDecision, decide, gain_shares
from include.model.params import TrainParams
from include.model.refit import guard
from include.model.training import TrainingRows, evaluate, fit_model, training_rows
from include.monitoring.profile import reference_profile
from include.monitoring.windows import frame_report
from include.usecases import UseCase

if TYPE_CHECKING:
    import pandas as pd


Key = tuple[int, bool]
"""A model of the replay: (the week its window ends with, whether it is the refit)."""


@dataclass
class Trained:
    model: object
    profile: dict
    reference: dict
    """The model's own evaluation metrics, as the monitor reads them from its training run."""
    window: dict
    rows: TrainingRows | None = None
    """The window's rows: the held-out week is what the gate scores both models on."""
    heldout: float | None = None
    """A refit's ROC AUC on the held-out week it was fitted on too: what its guard compares."""


@dataclass
class Served:
    rows: int
    labelled: int
    roc_auc: float | None
    log_loss: float | None
    estimated_roc_auc: float | None
    report: dict


@dataclass
class Replay:
    """The weeks of a replay, their rows, and the models and served weeks computed so far (cached:
    the same window or (model, week) is computed once however many policies ask)."""

    usecase: UseCase
    weeks: list[Week]
    params: TrainParams
    min_partitions: int
    threshold: float
    cache: Path | None = None
    """Where fitted models are kept across runs (None: nowhere)."""
    started: float = field(default_factory=time.monotonic)
    loaded: int = 0
    """Models read from the cache instead of fitted."""
    _partitions: dict[str, pd.DataFrame] = field(default_factory=dict)
    _models: dict[int, Trained] = field(default_factory=dict)
    _refits: dict[int, Trained] = field(default_factory=dict)
    _served: dict[tuple[Key, int], Served] = field(default_factory=dict)
    _gated: dict[tuple[int, Key, GateConfig], GateDecision] = field(default_factory=dict)

    @property
    def fits(self) -> int:
        return len(self._models)

    @property
    def refits(self) -> int:
        return len(self._refits)

    def progress(self) -> str:
        cached = f" ({self.loaded} from the cache)" if self.loaded else ""
        refits = f" + {self.refits} refits" if self.refits else ""
        return f"[{self.fits} windows{refits}{cached}, {self.elapsed():.0f} s]"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def week(self, number: int) -> Week:
        return self.weeks[number - 1]

    def windows(self) -> dict[int, dict]:
        """Each fitted window (by the week it ends with) and the model's evaluation metrics."""
        return {n: t.window | {"reference": t.reference} for n, t in sorted(self._models.items())}

    def rows(self, records: list[dict]) -> pd.DataFrame:
        """The rows of the partitions `records` name (all of them: training drops the unlabelled
        itself, and served traffic includes them)."""
        import pandas as pd

        bounds = {start.isoformat(): (start, end) for week in self.weeks for start, end in week.partitions}
        for record in records:
            if record["partition"] not in self._partitions:
                self._partitions[record["partition"]] = self.usecase.load_interval(*bounds[record["partition"]])
        return pd.concat([self._partitions[r["partition"]] for r in records], ignore_index=True)

    def frame(self, number: int) -> pd.DataFrame:
        """The rows of week `number`."""
        return self.rows(partition_records([self.week(number)]))

    def trained(self, number: int) -> Trained:
        """The model trained at the end of week `number`, with its reference profile."""
        if number not in self._models:
            train_recs, eval_recs = select_partitions(
                partition_records(self.weeks[:number]), self.params.window_weeks, self.params.eval_partitions, self.min_partitions
            )
            train_df, eval_df = self.rows(train_recs), self.rows(eval_recs)
            rows = training_rows(self.usecase, train_df, eval_df)
            began = time.monotonic()
            model = self.fit(rows)
            evaluation, _ = evaluate(model, rows, self.threshold)
            profile = reference_profile(model, self.usecase, train_df, eval_df)
            window = {
                "week": number,
                "start": train_recs[0]["interval_start"],
                "end": eval_recs[-1]["interval_end"],
                "train_partitions": len(train_recs),
                "eval_partitions": len(eval_recs),
                "train_rows": len(rows.X),
                "eval_rows": len(rows.X_eval),
            }
            reference = {m: finite(evaluation[m]) for m in ("roc_auc", "pr_auc")}
            self._models[number] = Trained(model, profile, reference, window, rows)
            say(
                f"  week {number}'s window ({len(train_recs)} + {len(eval_recs)} partitions, {len(rows.X):,} training rows): "
                f"eval ROC AUC {fmt(reference['roc_auc'])}, {time.monotonic() - began:.0f} s {self.progress()}"
            )
        return self._models[number]

    def refitted(self, number: int) -> Trained:
        """The refit of week `number`'s challenger: its configuration on the whole window, held-out
        week included; it carries the challenger's profile and evaluation, as in the loop."""
        if number not in self._refits:
            import pandas as pd

            judged = self.trained(number)
            rows = judged.rows
            whole = TrainingRows(
                pd.concat([rows.X, rows.X_eval], ignore_index=True),
                pd.concat([rows.y, rows.y_eval], ignore_index=True),
                rows.X_eval,
                rows.y_eval,
                rows.eval_slices,
            )
            model = self.fit(whole)
            heldout = finite(evaluate(model, whole, self.threshold)[0]["roc_auc"])
            self._refits[number] = Trained(
                model, judged.profile, judged.reference, judged.window | {"refit": True}, rows, heldout
            )
        return self._refits[number]

    def model(self, key: Key) -> Trained:
        week, refit = key
        return self.refitted(week) if refit else self.trained(week)

    def refit_guard(self, number: int) -> bool:
        """The loop's guard (`include/model/refit.py`): the refit scores the held-out week at least as
        well as the challenger that never saw it."""
        return guard(self.refitted(number).heldout or math.nan, self.trained(number).reference["roc_auc"] or math.nan)

    def gate(self, number: int, champion: Key, config: GateConfig) -> GateDecision:
        """The champion gate on week `number`'s challenger against the `champion`, both scored on the
        challenger's held-out week (the loop's `decide`, with the same slices and sanity checks)."""
        key = (number, champion, config)
        if key not in self._gated:
            judged, serving = self.trained(number), self.model(champion)
            rows = judged.rows
            self._gated[key] = decide(
                rows.y_eval.to_numpy(),
                judged.model.predict_proba(rows.X_eval)[:, 1],
                serving.model.predict_proba(rows.X_eval)[:, 1],
                config,
                rows.eval_slices,
                self.threshold,
                (gain_shares(judged.model), gain_shares(serving.model)),
                judged.reference.get(config.metric),  # what its evaluation recorded, as the loop's training run does
            )
        return self._gated[key]

    def fit(self, rows: TrainingRows):
        """The training task's `fit_model` (in process), or the model it gave for the same inputs in
        an earlier run (from the cache)."""
        if self.cache is None:
            return fit_model(self.usecase, rows, self.params)[0]
        from xgboost import XGBClassifier

        path = self.cache / f"{fit_digest(rows.X, rows.y, self.params, self.usecase.categorical)}.ubj"
        if path.exists():
            model = XGBClassifier()
            model.load_model(path)
            self.loaded += 1
            return model
        model = fit_model(self.usecase, rows, self.params)[0]
        self.cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.ubj")
        model.save_model(partial)
        partial.replace(path)  # whole or absent: a run killed while saving leaves no half model
        return model

    def served(self, model: Key, number: int) -> Served:
        """Week `number` served by `model`: its score, CBPE's estimate and the monitor's report."""
        key = (model, number)
        if key not in self._served:
            import numpy as np

            trained, df = self.model(model), self.frame(number)
            X = self.usecase.build_features(df)
            scores = trained.model.predict_proba(X)[:, 1]
            labels = self.usecase.build_target(df).to_numpy(dtype="float64")
            days = int(df[self.usecase.contract.event_time].dt.tz_convert(self.usecase.calendar.timezone).dt.date.nunique())
            # the week's score and CBPE's estimate are the report's own: what the policy decides on
            report = frame_report(trained.profile, X, scores, labels, days)
            self._served[key] = Served(
                rows=len(df),
                labelled=int((~np.isnan(labels)).sum()),
                roc_auc=finite(report["performance"].get("roc_auc")),
                log_loss=finite(report["performance"].get("log_loss")),
                estimated_roc_auc=finite(report.get("estimated", {}).get("roc_auc")),
                report=report,
            )
        return self._served[key]


def fit_digest(X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...]) -> str:
    """A digest of everything the fit depends on: the rows and labels, the options, the XGBoost
    version and the engine's own code."""
    import pandas as pd
    import xgboost

    from include.model import engines

    digest = hashlib.sha256(Path(engines.__file__).read_bytes())
    options = {
        "params": params.xgb_params(),
        "categorical": list(categorical),
        "columns": list(X.columns),
        "xgboost": xgboost.__version__,
    }
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(X, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(y, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]
