"""Broken challengers, planted through the real train → gate path (`train_candidate`, then
`run_champion_gate` against a real MLflow server), in both use cases: each is rejected, and the
reason names what gave it away.

Each break is a bug upstream of the model, in the use case's own code or in its data: labels
shuffled, the most important feature held constant, a unit changed in a batch that bypassed the
data gate, a model cut to one tree, a feature built from the label (a leak, which inflates its own
evaluation), a constant output. Training sees the broken use case; the gate scores on the real
one, as it would once the bug is gone from the evaluation rows, except the leak, which the gate's
rows carry too (a leak is in the feature code, so it inflates the challenger's evaluation)."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pandas as pd
import pytest

from include.data.gate import validate_partition
from include.data.partitions import Partition, land_partition
from include.model.gate import run_champion_gate
from include.model.params import TrainParams
from include.model.registry import CHAMPION, connect
from include.model.training import train_candidate
from include.settings import get_settings
from include.usecases import get_usecase

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARAMS = {
    "flights": TrainParams(window_weeks=6, n_estimators=150, max_depth=5),
    "payments": TrainParams(
        window_weeks=3, eval_partitions=7, n_estimators=150, max_depth=4
    ),  # a week held out: one day holds ~40 chargebacks
}


@pytest.fixture(scope="module", params=["flights", "payments"])
def loop(request, tmp_path_factory, mlflow_server, validated_store):
    """A use case's validated partitions, a champion trained and promoted on them, and its
    booster's most important feature."""
    import shutil

    name = request.param
    root = tmp_path_factory.mktemp(f"broken-{name}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOP_USECASE", name)
        mp.setenv("LOOP_STORAGE_URI", str(root / "zones"))
        mp.setenv("LOOP_STATE_DIR", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("LOOP_MODEL_NAME", f"it-broken-{name}")
        get_settings.cache_clear()
        settings, usecase = get_settings(), get_usecase(name)
        if name == "flights":  # the run's six validated weeks of May–June 2013
            shutil.copytree(validated_store, root / "zones")
        else:  # 18 days of January 2024
            for start, end in usecase.calendar.intervals()[:18]:
                p = Partition(name, start, end)
                land_partition(usecase, p, replay=True)
                validate_partition(usecase, p, max_bad_row_share=settings.max_bad_row_share)
        champion = train_candidate(usecase, PARAMS[name], settings, dag_id="train", dag_run_id="champion")
        decision = run_champion_gate(usecase, settings, champion["model_name"], champion["version"])
        assert decision["promoted"], decision["reason"]
        booster = mlflow.xgboost.load_model(f"models:/{champion['model_name']}/{champion['version']}").get_booster()
        gains = booster.get_score(importance_type="total_gain")
        numeric = [f for f in usecase.features if f not in usecase.categorical]
        print(
            f"\n{name} champion's gain shares: "
            + ", ".join(f"{f} {g / sum(gains.values()):.0%}" for f, g in sorted(gains.items(), key=lambda kv: -kv[1])[:6])
        )
        yield settings, usecase, champion, max(gains, key=gains.get), max((f for f in numeric if f in gains), key=gains.get)
    get_settings.cache_clear()


def broken(usecase, kind: str, top: str, top_numeric: str):
    """The use case as a bug would leave it (training side), and the TrainParams override."""
    features, target = usecase.build_features, usecase.build_target
    rng = np.random.default_rng(0)

    def with_features(change):
        return dataclasses.replace(usecase, build_features=lambda df: change(features(df), df))

    if kind == "labels shuffled":
        return dataclasses.replace(
            usecase, build_target=lambda df: pd.Series(rng.permutation(target(df).to_numpy()), index=df.index)
        ), {}
    if kind == "top feature constant":
        return with_features(lambda X, df: X.assign(**{top: X[top].iloc[0]})), {}
    if kind == "unit changed":  # a realistic unit change of an important column, in rows the data gate never saw
        return dataclasses.replace(usecase, build_features=lambda df: features(UNIT_CHANGE[usecase.name](df))), {}
    if kind == "one tree":
        return usecase, {"n_estimators": 1}
    if kind == "leak":  # the label, lightly disguised, in place of the least important numeric feature
        return leaky(usecase, top), {}
    if kind == "constant output":  # every feature one value: no tree can split
        return with_features(lambda X, df: X.iloc[[0] * len(X)].set_index(X.index)), {}
    raise ValueError(kind)


def leaky(usecase, top: str):
    """Feature code that reads the label: a numeric feature other than `top` becomes the label plus noise."""
    features, target = usecase.build_features, usecase.build_target
    column = next(f for f in usecase.features if f not in usecase.categorical and f != top)

    def build(df):
        y = target(df).fillna(0).to_numpy(dtype=float)
        return features(df).assign(**{column: y + np.random.default_rng(1).random(len(df)) * 0.5})

    return dataclasses.replace(usecase, build_features=build)


def hhmm_to_minutes(df: pd.DataFrame) -> pd.DataFrame:
    """The scheduled departure as minutes after midnight instead of HHMM (the data gate's own list of
    realistic unit changes, tests/integration/test_data_gate.py)."""
    return df.assign(sched_dep_time=df["sched_dep_time"] // 100 * 60 + df["sched_dep_time"] % 100)


UNIT_CHANGE = {"flights": hhmm_to_minutes, "payments": get_usecase("payments").faults["amount_in_cents"]}
EXPECTED = {
    "labels shuffled": "below the floor",
    "top feature constant": "never uses",
    "unit changed": "worse than the champion beyond the margin",
    "one tree": "worse than the champion beyond the margin",
    "leak": "too good to be true",
    "constant output": "degenerate",
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_broken_challenger_is_rejected_through_the_real_path(loop, kind):
    settings, usecase, champion, top, top_numeric = loop
    # each break is judged against the same sound champion (an earlier plant may have moved the alias)
    connect(settings.mlflow_tracking_uri).set_registered_model_alias(champion["model_name"], CHAMPION, champion["version"])
    trained_on, override = broken(usecase, kind, top, top_numeric)
    params = PARAMS[usecase.name].model_copy(update=override)
    out = train_candidate(trained_on, params, settings, dag_id="train", dag_run_id=f"broken-{kind.replace(' ', '-')}")
    judged_on = trained_on if kind == "leak" else usecase
    decision = run_champion_gate(judged_on, settings, out["model_name"], out["version"])
    print(f"\n{usecase.name}, {kind}: {decision['reason'][:300]}")
    assert not decision["promoted"], decision["reason"]
    # the reason names the break: a sanity check, or the paired comparison (one of them suffices)
    assert EXPECTED[kind] in decision["reason"] or "broken:" in decision["reason"], decision["reason"]
