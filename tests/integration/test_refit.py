"""The refit through the real path: train → gate (alias left) → refit → its profile → guard and serve,
against a real MLflow server and the validated weeks."""

from __future__ import annotations

import mlflow
import pytest

from include.alerting.alerts import read_alerts
from include.model.gate import run_champion_gate
from include.model.params import TrainParams
from include.model.refit import HELD_OUT, REFIT_OF, guard, refit_accepted, serve_accepted
from include.model.registry import CHALLENGER, CHAMPION, alias_version, connect
from include.model.training import train_candidate
from include.monitoring.profile import load_profile, log_reference_profile

pytestmark = pytest.mark.integration
PARAMS = TrainParams(window_weeks=8, n_estimators=120, max_depth=4, learning_rate=0.1)


def test_the_guard_is_strict_about_what_it_cannot_compare():
    assert guard(0.71, 0.70) and guard(0.70, 0.70)
    assert not guard(0.69, 0.70)
    assert not guard(float("nan"), 0.70) and not guard(0.71, float("nan"))


def _accepted(env, flights, run_id: str) -> dict:
    trained = train_candidate(flights, PARAMS, env, dag_id="train", dag_run_id=run_id)
    log_reference_profile(env.mlflow_tracking_uri, flights, trained["model_name"], trained["version"])
    decision = run_champion_gate(flights, env, trained["model_name"], trained["version"], move_alias=False)
    assert decision["promoted"]
    client = connect(env.mlflow_tracking_uri)
    assert alias_version(client, trained["model_name"], CHAMPION) is None, "with a refit to come, the gate leaves the alias"
    return decision


def test_an_accepted_challenger_is_refitted_on_its_whole_window_and_the_refit_serves(env, flights):
    decision = _accepted(env, flights, "manual__refit")
    name, gated = decision["model_name"], decision["version"]
    refit = refit_accepted(flights, PARAMS, env, decision, dag_id="train", dag_run_id="manual__refit")
    assert refit["gated_version"] == gated and refit["version"] != gated and not refit["reused"]
    client = connect(env.mlflow_tracking_uri)
    assert alias_version(client, name, CHALLENGER).version == gated, "the refit takes no alias until it serves"

    # lineage of both: the refit read the gated version's training and held-out partitions, hash for hash
    gated_mv, refit_mv = client.get_model_version(name, gated), client.get_model_version(name, refit["version"])
    judged = mlflow.artifacts.load_dict(f"runs:/{gated_mv.run_id}/lineage/partitions.json")
    seen = mlflow.artifacts.load_dict(f"runs:/{refit_mv.run_id}/lineage/partitions.json")
    assert seen["train"] == judged["train"] + judged["eval"] and seen["eval"] == judged["eval"]
    assert seen["gated"] == {"version": gated, "run_id": gated_mv.run_id}
    assert refit_mv.tags[REFIT_OF] == gated and refit_mv.tags["loop.data_window"] == gated_mv.tags["loop.data_window"]
    gated_run, refit_run = client.get_run(gated_mv.run_id), client.get_run(refit_mv.run_id)
    assert int(refit_run.data.params["n_train_rows"]) == int(gated_run.data.params["n_train_rows"]) + int(
        gated_run.data.params["n_eval_rows"]
    )
    for key in ("max_depth", "n_estimators", "learning_rate"):
        assert refit_run.data.params[key] == gated_run.data.params[key]
    # what it expects of live traffic is the judged fit's out-of-sample evaluation; its own scores of the week are apart
    assert refit_run.data.metrics["eval_roc_auc"] == gated_run.data.metrics["eval_roc_auc"]
    assert refit_run.data.metrics[f"{HELD_OUT}_roc_auc"] > gated_run.data.metrics["eval_roc_auc"]

    # the monitor's reference of the refit is the judged version's profile
    log_reference_profile(env.mlflow_tracking_uri, flights, name, refit["version"])
    carried, judged_profile = (
        load_profile(env.mlflow_tracking_uri, name, refit["version"]),
        load_profile(env.mlflow_tracking_uri, name, gated),
    )
    assert carried.pop("carried_from_version") == gated and carried == judged_profile

    served = serve_accepted(env, refit, flights)
    assert served["version"] == refit["version"] and served["promoted"]
    champion = alias_version(client, name, CHAMPION)
    assert champion.version == refit["version"] and champion.tags["gate.decision"] == "promote"
    assert champion.tags["refit.guard"] == "passed" and champion.tags["gate.applied"] == "true"
    assert f"refit of v{gated}" in champion.tags["gate.reason"] and "≥" in champion.tags["gate.reason"]
    assert client.get_model_version(name, gated).tags["refit.version"] == refit["version"]
    # each version's card, as the run's artifact and the version's description, carries the outcome
    for version, says in (
        (gated, f"Served as its refit, v{refit['version']} (guard passed)."),
        (refit["version"], f"A refit of v{gated}"),
    ):
        mv = client.get_model_version(name, version)
        card = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/model_card.md")
        assert mv.description == card and says in card and "**promote**" in card
    assert "plots/calibration.png" in {a.path for a in client.list_artifacts(gated_mv.run_id, "plots")}

    # a rerun of either step (a retried or cleared task) makes no second version and changes nothing
    again = refit_accepted(flights, PARAMS, env, decision, dag_id="train", dag_run_id="manual__refit")
    assert again == refit | {"reused": True}
    assert serve_accepted(env, again, flights) == served
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_a_refit_that_scores_its_own_week_worse_than_the_challenger_does_not_serve(env, flights):
    decision = _accepted(env, flights, "manual__refit_guard")
    name, gated = decision["model_name"], decision["version"]
    # A refit cut short: one stump cannot score even the week it saw as well as the challenger scores it unseen.
    stump = PARAMS.model_copy(update={"n_estimators": 1, "max_depth": 1})
    refit = refit_accepted(flights, stump, env, decision, dag_id="train", dag_run_id="manual__refit_guard")
    served = serve_accepted(env, refit, flights)
    client = connect(env.mlflow_tracking_uri)
    assert served["version"] == gated and alias_version(client, name, CHAMPION).version == gated
    rejected = client.get_model_version(name, refit["version"])
    assert rejected.tags["gate.decision"] == "reject" and rejected.tags["refit.guard"] == "failed"
    assert "failed its guard" in rejected.tags["gate.reason"] and "<" in rejected.tags["gate.reason"]
    mine = [a for a in read_alerts(env) if a["kind"] == "refit_guard" and a["details"]["model_name"] == name]
    assert [a["details"]["version"] for a in mine] == [refit["version"]]
