"""`make backtest`: every retrain policy replayed on the use case's history, week by week.

No servers: no MLflow, no Airflow, no GX. The replay calls what the DAGs call, on the rows the use
case's `load_interval` returns (already in the contract's shape: the data gate is not replayed):
`dataset.select_partitions` and `labelled` for the training window, `engines.fit` for the model,
`profile.reference_profile` for its reference, `windows.frame_report` for what the monitor sees,
`policy.decide` for the decision. The week's score (`metrics.compute_metrics` of its labelled
rows) and CBPE's estimate are the report's own.

The timeline. The calendar's intervals (the use case's partitions) are grouped into weeks counted
from the calendar's start, numbered from 1: with a weekly calendar a week is one partition (the
flights of 2013: Tuesday to Monday in New York time, 53 weeks, the last one a single day), with a
daily calendar seven.

* A model trained at the end of week t uses the training window of the `train` DAG's defaults
  (`TrainParams`): the partitions of the `window_weeks` weeks ending with week t, the newest
  `eval_partitions` of them held out for evaluation (7 + 1 weeks), as `select_partitions` picks
  them. It serves week t+1.
* The first model is trained at the end of the first week with a full window (week 8) and serves
  week 9; every policy serves the same weeks, from there to the last.
* After serving week w, the monitor sees that week whole: features, the served model's scores and
  the labels, which land with the week's data. The policy decides; a retrain trains on the window
  ending with week w, and the new model serves week w+1. Nothing is trained after the last week
  (no week is left to serve), and a retrain is counted only when its model serves.
* Each served week is scored: ROC AUC and log loss of the serving model on the week's labelled
  rows (rows without a label, such as cancelled flights, are left out), next to CBPE's estimate of
  the ROC AUC from the week's scores alone (`noise.estimated_performance`).

The policies: `never` (the first model serves every week), `weekly`, `every 4 weeks`, `every k
weeks` with k chosen so it retrains as often as `default`, `drift (today's rule)`
(`PolicyConfig.todays_rule()`) and `default` (`PolicyConfig()`); the monitor's two get the use
case's `drift_exempt` features, as the monitor gives them. A fixed schedule retrains after the week
its model turns k weeks old. Times are data time, as in the monitor: "now" is the end of the week
seen, the last training the end of the serving model's window.

The same window gives the same model (XGBoost with a fixed seed), so models and profiles are cached
by the week their window ends with, and scores and reports by (model, week): the whole replay fits
each window at most once (weekly's, 45 windows for 2013, pays for all). Fitted models are also kept
on disk (`--cache`, default `<out>/fits/`, keyed by a digest of exactly what `fit` receives and of
the engine's code), so a rerun, after an interruption or a change of the policy, fits nothing it
fitted before; profiles, reports and decisions are always computed afresh.

Writes to `--out` (default `backtest/`): `results.json` (settings, runtime, per policy its retrains,
per-week and mean ROC AUC and log loss, alerts, CBPE against the realised AUC, the default policy's
drift numbers), `results.md` (the table printed at the end) and `served_quality.png`.

With `--sweep` (on in `make backtest`) the default policy is also replayed over a grid of drift
shares and maximum model ages (`sweep`), each setting scored over the year and over each half of
it: the table a team chooses its own defaults from (results.json "sweep", results.md).

    python -m include.monitoring.backtest [--weeks N | --start DATE --end DATE] [--out DIR] [--usecase NAME] [--sweep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from include.model.dataset import NotEnoughData, labelled, select_partitions
from include.model.engines import fit
from include.model.metrics import compute_metrics
from include.model.params import TrainParams
from include.monitoring.policy import History, PolicyConfig, decide, signals
from include.monitoring.profile import reference_profile
from include.monitoring.windows import frame_report
from include.usecases import Calendar, UseCase

if TYPE_CHECKING:
    import pandas as pd

CBPE_TOLERANCE = 0.03
"""A CBPE estimate hits when it is this close to the realised ROC AUC."""
EVERY_N_WEEKS = 4


class NoWeekToServe(ValueError):
    """The replay is too short for its training window: no week is left to serve."""


@dataclass(frozen=True)
class Week:
    number: int
    """1 for the calendar's first week."""
    start: datetime
    end: datetime
    partitions: tuple[tuple[datetime, datetime], ...]
    """The calendar's intervals in the week (one for a weekly calendar)."""


@dataclass(frozen=True)
class Policy:
    """A fixed schedule (`every` weeks; None and no config: never retrain) or the monitor's policy."""

    name: str
    every: int | None = None
    config: PolicyConfig | None = None


def replay_weeks(calendar: Calendar, weeks: int | None = None) -> list[Week]:
    """The calendar's intervals grouped into weeks from its start (the first `weeks` only, if given)."""
    groups: dict[int, list[tuple[datetime, datetime]]] = {}
    for start, end in calendar.intervals():
        groups.setdefault((start.date() - calendar.start).days // 7, []).append((start, end))
    out = [Week(i + 1, parts[0][0], parts[-1][1], tuple(parts)) for i, parts in enumerate(groups.values())]
    return out[:weeks] if weeks else out


def partition_records(weeks: list[Week]) -> list[dict]:
    """The weeks' partitions as the records `select_partitions` reads (bounds in UTC, as the gate writes them)."""
    return [
        {
            "partition": start.isoformat(),
            "interval_start": start.astimezone(UTC).isoformat(),
            "interval_end": end.astimezone(UTC).isoformat(),
        }
        for week in weeks
        for start, end in week.partitions
    ]


def fixed_schedule(first: int, last: int, every: int | None) -> list[int]:
    """The weeks after which a schedule retraining every `every` weeks trains a model that serves: the
    first model (end of week `first`) serves from week first+1, each model `every` weeks, and nothing
    is trained after week `last`. None: never."""
    return [] if every is None else list(range(first + every, last, every))


def matching_interval(retrains: int, first: int, last: int) -> int:
    """The k whose `fixed_schedule` retrains closest to `retrains` times (the smaller k on a tie);
    k = the number of served weeks when `retrains` is 0 (a schedule that never comes due)."""
    served = last - first
    if served < 1:
        raise ValueError(f"no served weeks between the first model (week {first}) and the last week ({last})")
    return min(range(1, served + 1), key=lambda k: (abs(len(fixed_schedule(first, last, k)) - retrains), k))


def default_policies(usecase: UseCase) -> list[Policy]:
    """The policies of the comparison, the matched schedule aside (it depends on `default`'s retrains)."""
    exempt = tuple(usecase.drift_exempt)
    return [
        Policy("never"),
        Policy("weekly", every=1),
        Policy(f"every {EVERY_N_WEEKS} weeks", every=EVERY_N_WEEKS),
        Policy("drift (today's rule)", config=replace(PolicyConfig.todays_rule(), exempt=exempt)),
        Policy("default", config=replace(PolicyConfig(), exempt=exempt)),
    ]


@dataclass
class Trained:
    model: object
    profile: dict
    reference: dict
    """The model's own evaluation metrics, as the monitor reads them from its training run."""
    window: dict


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
    _served: dict[tuple[int, int], Served] = field(default_factory=dict)

    @property
    def fits(self) -> int:
        return len(self._models)

    def progress(self) -> str:
        cached = f" ({self.loaded} from the cache)" if self.loaded else ""
        return f"[{self.fits} windows{cached}, {self.elapsed():.0f} s]"

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
            X, y, _ = labelled(self.usecase, train_df)
            X_eval, y_eval, _ = labelled(self.usecase, eval_df)
            began = time.monotonic()
            model = self.fit(X, y)
            evaluation = compute_metrics(y_eval, model.predict_proba(X_eval)[:, 1], self.threshold)
            profile = reference_profile(model, self.usecase, train_df, eval_df)
            window = {
                "week": number,
                "start": train_recs[0]["interval_start"],
                "end": eval_recs[-1]["interval_end"],
                "train_partitions": len(train_recs),
                "eval_partitions": len(eval_recs),
                "train_rows": len(X),
                "eval_rows": len(X_eval),
            }
            reference = {m: _number(evaluation[m]) for m in ("roc_auc", "pr_auc")}
            self._models[number] = Trained(model, profile, reference, window)
            say(
                f"  week {number}'s window ({len(train_recs)} + {len(eval_recs)} partitions, {len(X):,} training rows): "
                f"eval ROC AUC {_fmt(reference['roc_auc'])}, {time.monotonic() - began:.0f} s {self.progress()}"
            )
        return self._models[number]

    def fit(self, X: pd.DataFrame, y: pd.Series):
        """`engines.fit`, or the model it gave for the same inputs in an earlier run (from the cache)."""
        if self.cache is None:
            return fit(X, y, self.params, self.usecase.categorical)
        from xgboost import XGBClassifier

        path = self.cache / f"{fit_digest(X, y, self.params, self.usecase.categorical)}.ubj"
        if path.exists():
            model = XGBClassifier()
            model.load_model(path)
            self.loaded += 1
            return model
        model = fit(X, y, self.params, self.usecase.categorical)
        self.cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.ubj")
        model.save_model(partial)
        partial.replace(path)  # whole or absent: a run killed while saving leaves no half model
        return model

    def served(self, model_week: int, number: int) -> Served:
        """Week `number` served by the model of week `model_week`: its score, CBPE's estimate and the monitor's report."""
        key = (model_week, number)
        if key not in self._served:
            import numpy as np

            trained, df = self.trained(model_week), self.frame(number)
            X = self.usecase.build_features(df)
            scores = trained.model.predict_proba(X)[:, 1]
            labels = self.usecase.build_target(df).to_numpy(dtype="float64")
            days = int(df[self.usecase.contract.event_time].dt.tz_convert(self.usecase.calendar.timezone).dt.date.nunique())
            # the week's score and CBPE's estimate are the report's own: what the policy decides on
            report = frame_report(trained.profile, X, scores, labels, days)
            self._served[key] = Served(
                rows=len(df),
                labelled=int((~np.isnan(labels)).sum()),
                roc_auc=_number(report["performance"].get("roc_auc")),
                log_loss=_number(report["performance"].get("log_loss")),
                estimated_roc_auc=_number(report.get("estimated", {}).get("roc_auc")),
                report=report,
            )
        return self._served[key]


def fit_digest(X: pd.DataFrame, y: pd.Series, params: TrainParams, categorical: tuple[str, ...]) -> str:
    """A digest of everything `engines.fit` depends on: the rows and labels, the options, the
    XGBoost version and the engine's own code."""
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


def first_model_week(weeks: list[Week], window_weeks: int) -> int:
    """The first week with a full training window behind it; raises if no week would be left to serve."""
    if len(weeks) <= window_weeks:
        raise NoWeekToServe(
            f"{len(weeks)} weeks to replay and a {window_weeks}-week training window leave no week to serve: "
            "replay more weeks (--weeks, --start/--end) or shorten the window (--window-weeks)"
        )
    return window_weeks


def replay(replayed: Replay, policies: list[Policy], first: int, *, quiet: bool = False) -> dict[str, list[dict]]:
    """Serve weeks first+1 … last under each policy in step; per policy, one record per served week
    (`quiet`: no line per week)."""
    last = len(replayed.weeks)
    due = {p.name: set(fixed_schedule(first, last, p.every)) for p in policies if p.config is None}
    model = dict.fromkeys((p.name for p in policies), first)
    requests: dict[str, list[tuple[datetime, str]]] = {p.name: [] for p in policies}
    records: dict[str, list[dict]] = {p.name: [] for p in policies}
    for week in replayed.weeks[first:]:
        said = []
        for policy in policies:
            serving = model[policy.name]
            served = replayed.served(serving, week.number)
            record = {
                "week": week.number,
                "model_week": serving,
                "rows": served.rows,
                "labelled": served.labelled,
                "roc_auc": served.roc_auc,
                "log_loss": served.log_loss,
                "cbpe_roc_auc": served.estimated_roc_auc,
            }
            if policy.config is None:
                retrain = week.number in due[policy.name]
                said.append(f"{policy.name}: {'retrain' if retrain else '-'}")
            else:
                history = History(
                    now=week.end,
                    last_training_at=replayed.week(serving).end,
                    requests=tuple(requests[policy.name]),
                )
                decision = decide(served.report, replayed.trained(serving).reference, history, policy.config)
                if decision.action == "retrain":
                    requests[policy.name].append((week.end, decision.cause))
                retrain = decision.action == "retrain" and week.number < last
                record |= {
                    "action": decision.action,
                    "cause": decision.cause,
                    "reason": decision.reason,
                    "evidence": decision.evidence,
                }
                record["drift"] = drift_numbers(served.report)
                said.append(f"{policy.name}: {decision.action}" + (f" ({decision.cause})" if decision.cause else ""))
            record["retrained"] = retrain
            if retrain:
                model[policy.name] = week.number
            records[policy.name].append(record)
        if not quiet:
            say(
                f"week {week.number:>2} {week.start.date()}…{(week.end - timedelta(days=1)).date()}: "
                + " | ".join(said)
                + f"  {replayed.progress()}"
            )
    return records


def drift_numbers(report: dict, top: int = 3) -> dict:
    """The report's headline drift numbers: prediction drift, the most drifted features, the labels."""
    features = sorted(report.get("features", {}).items(), key=lambda kv: -kv[1].get("psi", 0.0))
    return {
        "prediction": {k: v for k, v in report.get("prediction", {}).items() if isinstance(v, int | float)},
        "top_features_psi": {name: f.get("psi") for name, f in features[:top]},
        "labels": report.get("labels", {}),
    }


def summarize(policy: Policy, records: list[dict]) -> dict:
    """A policy's results from its weekly records."""
    aucs = [r["roc_auc"] for r in records]
    losses = [r["log_loss"] for r in records]
    retrained = [r["week"] for r in records if r["retrained"]]
    scored = [(r["cbpe_roc_auc"], r["roc_auc"]) for r in records if r["roc_auc"] is not None and r["cbpe_roc_auc"] is not None]
    hits = [abs(est - real) <= CBPE_TOLERANCE for est, real in scored]
    out = {
        "name": policy.name,
        "every": policy.every,
        "config": asdict(policy.config) if policy.config else None,
        "retrains": {"count": len(retrained), "weeks": retrained},
        "models": 1 + len(retrained),
        "roc_auc": {"mean": _mean(aucs), "weeks": aucs},
        "log_loss": {"mean": _mean(losses), "weeks": losses},
        "cbpe": {
            "tolerance": CBPE_TOLERANCE,
            "hit_rate": sum(hits) / len(hits) if hits else None,
            "labelled_weeks": len(hits),
            "estimated_roc_auc": [r["cbpe_roc_auc"] for r in records],
            "realised_roc_auc": aucs,
        },
        "alerts": None,
        "weeks": records,
    }
    if policy.config is not None:
        alerts = [r for r in records if signals(r["cause"])]  # a retrain for age alone alerts no one
        causes: dict[str, int] = {}
        for r in records:
            if r["cause"]:
                causes[r["cause"]] = causes.get(r["cause"], 0) + 1
        out["alerts"] = {"count": len(alerts), "weeks": [r["week"] for r in alerts], "causes": causes}
    return out


SWEEP_SHARES = (0.15, 0.2, 0.25, 0.3, 0.4, None)
"""`--sweep`: the attribution rule's drift shares tried (None: drift never asks)."""
SWEEP_AGES = (None, 3, 4, 5, 6, 8)
"""`--sweep`: the maximum model ages tried, in weeks (None: no age limit)."""


def sweep(replayed: Replay, first: int, weekly: list[dict]) -> dict:
    """The default policy replayed with every drift share and maximum model age of the grid, the
    other knobs at their defaults: per setting its retrains and mean ROC AUC over the year and over
    each half of the served weeks, next to weekly retraining's (`weekly`: its records). A team
    chooses its defaults from this on its own history; the halves show how much of a difference is
    luck."""
    served = [r["week"] for r in weekly]
    split = served[len(served) // 2 - 1]  # the first half ends with this week

    def halves(records: list[dict]) -> list[dict]:
        out = []
        for part in ([r for r in records if r["week"] <= split], [r for r in records if r["week"] > split]):
            out.append(
                {
                    "weeks": [part[0]["week"], part[-1]["week"]],
                    "retrains": sum(r["retrained"] for r in part),
                    "roc_auc": _mean([r["roc_auc"] for r in part]),
                }
            )
        return out

    base = replace(PolicyConfig(), exempt=tuple(replayed.usecase.drift_exempt))
    grid = []
    for share in SWEEP_SHARES:
        for age in SWEEP_AGES:
            config = replace(
                base,
                drift_share=math.inf if share is None else share,
                max_model_age=None if age is None else timedelta(weeks=age),
            )
            records = replay(replayed, [Policy("sweep", config=config)], first, quiet=True)["sweep"]
            grid.append(
                {
                    "drift_share": share,
                    "max_model_age_weeks": age,
                    "retrains": sum(r["retrained"] for r in records),
                    "roc_auc": _mean([r["roc_auc"] for r in records]),
                    "halves": halves(records),
                    "default": share == PolicyConfig.drift_share and age is not None and timedelta(weeks=age) == PolicyConfig.max_model_age,
                }
            )
        say(f"  sweep: drift share {share if share is not None else 'off'} done {replayed.progress()}")
    return {"weekly": {"roc_auc": _mean([r["roc_auc"] for r in weekly]), "halves": halves(weekly)}, "grid": grid}


def sweep_table(result: dict) -> str:
    """The sweep as a table: one row per drift share, one column per maximum age."""
    weekly = result["weekly"]
    h1, h2 = weekly["halves"]
    lines = [
        f"Sweep of the default policy (mean ROC AUC / retrains; halves: weeks {h1['weeks'][0]}…{h1['weeks'][1]} | "
        f"{h2['weeks'][0]}…{h2['weeks'][1]}). Weekly retraining: {_fmt(weekly['roc_auc'])} "
        f"({_fmt(h1['roc_auc'])} | {_fmt(h2['roc_auc'])}); **bold**: the defaults.",
        "",
        "| drift share \\ max age | " + " | ".join("none" if a is None else f"{a} weeks" for a in SWEEP_AGES) + " |",
        "|---|" + "---:|" * len(SWEEP_AGES),
    ]
    for share in SWEEP_SHARES:
        cells = []
        for age in SWEEP_AGES:
            g = next(g for g in result["grid"] if g["drift_share"] == share and g["max_model_age_weeks"] == age)
            a, b = g["halves"]
            cell = f"{_fmt(g['roc_auc'])} / {g['retrains']} ({_fmt(a['roc_auc'], '.3f')} \\| {_fmt(b['roc_auc'], '.3f')})"
            cells.append(f"**{cell}**" if g["default"] else cell)
        lines.append(f"| {'off' if share is None else share} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_backtest(
    usecase: UseCase,
    out_dir: Path,
    *,
    weeks: int | None = None,
    params: TrainParams | None = None,
    min_partitions: int | None = None,
    threshold: float | None = None,
    cache: Path | None | bool = True,
    sweep_grid: bool = False,
) -> dict:
    """Replay the use case's calendar (its first `weeks` weeks, if given) under every policy, write
    results.json, results.md and served_quality.png to `out_dir`, and return what results.json holds.
    `cache`: where fitted models are kept across runs (True: `out_dir/fits`; False or None: nowhere).
    `sweep_grid`: also replay the default policy over the grid of `sweep` (results.json "sweep")."""
    from include.settings import get_settings

    settings = get_settings()
    params = params or TrainParams()
    replayed = Replay(
        usecase,
        replay_weeks(usecase.calendar, weeks),
        params,
        settings.min_train_partitions if min_partitions is None else min_partitions,
        settings.operating_threshold if threshold is None else threshold,
        cache=out_dir / "fits" if cache is True else cache or None,
    )
    first = first_model_week(replayed.weeks, params.window_weeks)
    last = len(replayed.weeks)
    say(
        f"backtest of {usecase.name}: weeks 1…{last} ({replayed.weeks[0].start.date()} … {replayed.weeks[-1].end.date()}), "
        f"first model at the end of week {first}, weeks {first + 1}…{last} served; window {params.window_weeks} weeks"
    )
    policies = default_policies(usecase)
    records = replay(replayed, policies, first)
    target = sum(r["retrained"] for r in records["default"])
    k = matching_interval(target, first, last)
    matched = Policy(f"every {k} week{'s' if k > 1 else ''} (matches default)", every=k)
    say(f"default retrained {target} times; every {k} weeks retrains {len(fixed_schedule(first, last, k))} times: replaying it")
    records |= replay(replayed, [matched], first)
    policies.insert(3, matched)
    swept = None
    if sweep_grid:
        say(f"sweep: the default policy with {len(SWEEP_SHARES) * len(SWEEP_AGES)} settings of drift share and maximum model age")
        swept = sweep(replayed, first, records["weekly"])

    results = _clean(
        {
            "usecase": usecase.name,
            "settings": {
                "calendar": {"start": usecase.calendar.start, "end": usecase.calendar.end, "timezone": usecase.calendar.timezone},
                "weeks": last,
                "first_model_week": first,
                "params": params.model_dump(mode="json"),
                "min_partitions": replayed.min_partitions,
                "operating_threshold": replayed.threshold,
                "cbpe_tolerance": CBPE_TOLERANCE,
            },
            "weeks": [{"week": w.number, "start": w.start, "end": w.end, "served": w.number > first} for w in replayed.weeks],
            "served_weeks": [w.number for w in replayed.weeks[first:]],
            "windows": replayed.windows(),
            "fits": {"windows": replayed.fits, "from_cache": replayed.loaded, "cache": replayed.cache},
            "policies": [summarize(p, records[p.name]) for p in policies],
            **({"sweep": swept} if swept else {}),
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_served_quality(results, out_dir / "served_quality.png")
    results["runtime_seconds"] = round(replayed.elapsed(), 1)
    table = markdown_table(results) + (f"\n{sweep_table(results['sweep'])}" if swept else "")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    (out_dir / "results.md").write_text(table)
    say(f"\n{table}\nwritten to {out_dir}/: results.json, results.md, served_quality.png {replayed.progress()}")
    return results


def markdown_table(results: dict) -> str:
    """The comparison table, with CBPE's hit rate and the run's extent below it."""
    lines = [
        "| policy | retrains | mean ROC AUC | mean log loss | alerts |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in results["policies"]:
        alerts = "–" if p["alerts"] is None else str(p["alerts"]["count"])
        lines.append(
            f"| {p['name']} | {p['retrains']['count']} | {_fmt(p['roc_auc']['mean'])} | {_fmt(p['log_loss']['mean'])} | {alerts} |"
        )
    default = next(p for p in results["policies"] if p["name"] == "default")
    cbpe = default["cbpe"]
    served = results["served_weeks"]
    lines += [
        "",
        f"{results['usecase']}: weeks {served[0]}…{served[-1]} served ({len(served)}), first model at the end of week "
        f"{results['settings']['first_model_week']}, {results['settings']['params']['window_weeks']}-week window; "
        f"{results['fits']['windows']} training windows ({results['fits']['from_cache']} from the cache) in "
        f"{results.get('runtime_seconds', 0):.0f} s.",
        f"CBPE (default policy): the estimate is within {CBPE_TOLERANCE} of the realised ROC AUC in "
        f"{_fmt(cbpe['hit_rate'], '.0%')} of {cbpe['labelled_weeks']} labelled weeks.",
    ]
    return "\n".join(lines) + "\n"


def plot_served_quality(results: dict, path: Path) -> None:
    """Served ROC AUC per week per policy, each policy's retrains as ticks in a strip below, and the
    default policy's CBPE estimate against its realised ROC AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = {w["week"]: w for w in results["weeks"]}
    served = results["served_weeks"]
    x = [datetime.fromisoformat(weeks[n]["start"]) for n in served]
    policies = results["policies"]
    colours = plt.get_cmap("tab10").colors

    def nan(values):
        return [math.nan if v is None else v for v in values]

    fig = plt.figure(figsize=(12, 9))
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 0.3 * len(policies) + 0.3, 2], hspace=0.3)
    ax = fig.add_subplot(grid[0])
    for i, p in enumerate(policies):
        ax.plot(
            x,
            nan(p["roc_auc"]["weeks"]),
            marker=".",
            linewidth=1.2,
            color=colours[i % 10],
            label=f"{p['name']} (mean {_fmt(p['roc_auc']['mean'])})",
        )
    ax.set_ylabel("served ROC AUC")
    ax.set_title(f"{results['usecase']}: the served model's ROC AUC on each week's labelled rows, per retrain policy")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)

    strip = fig.add_subplot(grid[1], sharex=ax)
    for i, p in enumerate(policies):
        # a retrain after week w serves from week w+1: tick it where that week starts
        ticks = [datetime.fromisoformat(weeks[n]["end"]) for n in p["retrains"]["weeks"]]
        strip.plot(ticks, [i] * len(ticks), linestyle="", marker="|", markersize=11, color=colours[i % 10])
        if p["alerts"]:
            quiet = [datetime.fromisoformat(weeks[n]["end"]) for n in p["alerts"]["weeks"] if n not in p["retrains"]["weeks"]]
            strip.plot(quiet, [i] * len(quiet), linestyle="", marker=".", markersize=4, color="grey")
    strip.set_yticks(range(len(policies)), [p["name"] for p in policies], fontsize=8)
    strip.set_ylim(len(policies) - 0.5, -0.5)
    strip.set_title("retrains (ticks; grey dots: alerts that did not retrain)", fontsize=9)
    strip.tick_params(axis="x", labelbottom=False)

    cb = fig.add_subplot(grid[2], sharex=ax)
    default = next(p for p in policies if p["name"] == "default")
    realised, estimated = nan(default["cbpe"]["realised_roc_auc"]), nan(default["cbpe"]["estimated_roc_auc"])
    cb.fill_between(
        x,
        [r - CBPE_TOLERANCE for r in realised],
        [r + CBPE_TOLERANCE for r in realised],
        color="#3b75af",
        alpha=0.15,
        label=f"realised ± {CBPE_TOLERANCE}",
    )
    cb.plot(x, realised, marker=".", color="#3b75af", label="realised ROC AUC")
    cb.plot(x, estimated, marker="x", linestyle="--", color="#c0392b", label="CBPE estimate (scores only)")
    cb.set_ylabel("ROC AUC")
    cb.set_title(
        f"default policy: CBPE's estimate vs the realised ROC AUC (within {CBPE_TOLERANCE}: {_fmt(default['cbpe']['hit_rate'], '.0%')} of weeks)",
        fontsize=9,
    )
    cb.legend(fontsize=8)
    cb.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def say(message: str) -> None:
    print(message, flush=True)


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def _clean(value):
    """JSON-ready: dates as ISO strings, durations and paths as strings, numpy scalars as numbers, NaN as None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, timedelta):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    from include.settings import get_settings
    from include.usecases import get_usecase

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default=None, help="the use case (default: LOOP_USECASE)")
    parser.add_argument("--weeks", type=int, default=None, help="replay only the first N weeks of the calendar")
    parser.add_argument(
        "--start", type=date.fromisoformat, default=None, help="replay from this date (default: the calendar's start)"
    )
    parser.add_argument(
        "--end", type=date.fromisoformat, default=None, help="replay up to this date (default: the calendar's end)"
    )
    parser.add_argument(
        "--window-weeks", type=int, default=None, help="training window in weeks (default: TrainParams', the DAG's)"
    )
    parser.add_argument("--out", type=Path, default=Path("backtest"), help="output directory (default: backtest/)")
    parser.add_argument("--cache", type=Path, default=None, help="where fitted models are kept across runs (default: <out>/fits)")
    parser.add_argument("--no-cache", action="store_true", help="fit every window afresh and keep nothing")
    parser.add_argument(
        "--sweep", action="store_true", help="also replay the default policy over a grid of drift shares and maximum model ages"
    )
    args = parser.parse_args(argv)
    if args.weeks is not None and args.end is not None:
        parser.error("give --weeks or --end, not both")
    if args.weeks is not None and args.weeks < 2:
        parser.error("--weeks must be at least 2")
    usecase = get_usecase(args.usecase or get_settings().usecase)
    calendar = replace(usecase.calendar, **{k: v for k, v in {"start": args.start, "end": args.end}.items() if v is not None})
    if calendar.end < calendar.start:
        parser.error(f"--end {calendar.end} is before the start {calendar.start}")
    params = TrainParams(**({"window_weeks": args.window_weeks} if args.window_weeks else {}))
    try:
        cache = False if args.no_cache else args.cache or True
        run_backtest(
            replace(usecase, calendar=calendar), args.out, weeks=args.weeks, params=params, cache=cache, sweep_grid=args.sweep
        )
    except (NoWeekToServe, NotEnoughData) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
