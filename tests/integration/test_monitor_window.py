"""A monitoring window end to end on real data and real GX: validated weeks, an inference log
written by the serving sink, labels joined from the validated zone, drift and decay, the policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from include.data.gate import validate_partition
from include.data.partitions import Partition, land_partition, read_validated
from include.local.traffic import request_bodies
from include.monitoring.policy import History, PolicyConfig, decide
from include.monitoring.profile import build_profile
from include.monitoring.windows import window_report
from include.serving.inference_log import InferenceLog
from include.serving.schema import request_model

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")
WEEKS = {"feb": datetime(2013, 2, 4, tzinfo=NY), "feb2": datetime(2013, 2, 11, tzinfo=NY), "jul": datetime(2013, 7, 8, tzinfo=NY)}


def score(features) -> np.ndarray:
    """A fixed stand-in model: later departures and worse visibility look later."""
    return np.clip(features["dep_hour"].to_numpy() / 30 + (10 - features["visib"].fillna(10).to_numpy()) / 40, 0, 1)


def validate_weeks(flights) -> dict[str, dict]:
    """Land and validate WEEKS in the current storage root; their validation records by name."""
    parts = {}
    for name, start in WEEKS.items():
        p = Partition("flights", start, start + timedelta(weeks=1))
        land_partition(flights, p, replay=True)
        parts[name] = validate_partition(flights, p, max_bad_row_share=0.01)
    return parts


def test_a_reference_week_triggers_nothing_and_a_summer_week_asks_for_retraining(flights, storage_root):
    parts = validate_weeks(flights)
    # The reference is every other row of two February weeks; the other rows are served: a window
    # drawn from the reference distribution. (Weather moves a lot from one week to the next, so a
    # later week is not "the same distribution" at weekly granularity.)
    february = read_validated([parts["feb"], parts["feb2"]])
    X = flights.build_features(february.iloc[::2])
    profile = build_profile(X, score(X), flights.build_target(february.iloc[::2]).to_numpy(), flights.categorical)

    Record = request_model(flights)
    sink = InferenceLog(flights, "1", "blue", flush_seconds=3600)
    for name, df in (("feb", february.iloc[1::2]), ("jul", read_validated([parts["jul"]]))):
        records = [
            Record.model_validate(r).model_dump() | {"request_id": f"{name}-{i}"}
            for i, r in enumerate(request_bodies(flights, df))
        ]
        features = flights.encode_records(records)
        s = score(flights.build_features(df)).tolist()
        sink.append(records, features, s, [x >= 0.5 for x in s])
    sink.close()

    config = PolicyConfig(min_labelled=1000)
    history = History(now=datetime(2013, 7, 20, tzinfo=NY))
    calm = window_report(flights, profile, WEEKS["feb"], WEEKS["feb2"] + timedelta(weeks=1))
    assert calm["n"] == len(february) // 2 and calm["model_versions"] == {"1": calm["n"]}
    assert (
        calm["labels"]["labelled"] > 0.85 * calm["n"]
    )  # labels joined from the validated zone (Feb 2013 had a blizzard: many cancellations)
    calm_decision = decide(calm, {"roc_auc": calm["performance"]["roc_auc"]}, history, config)
    assert calm_decision.action == "none", (calm_decision, calm["features"])

    summer = window_report(flights, profile, WEEKS["jul"], WEEKS["jul"] + timedelta(weeks=1))
    decision = decide(summer, {"roc_auc": calm["performance"]["roc_auc"]}, history, config)
    assert decision.action == "retrain" and decision.cause == "drift" and "temp" in decision.reason, decision
    assert summer["features"]["temp"]["psi"] > 1 and summer["labels"]["base_rate"] > calm["labels"]["base_rate"]
    assert 0.5 < summer["performance"]["roc_auc"] < 1 and summer["calibration"]["base_rate"] == pytest.approx(
        summer["labels"]["base_rate"]
    )


def serve_february_and_july(flights, settings, cbpe: bool = False):
    """A registered champion (a small XGBoost on half of February, its profile logged like the
    trainer does) whose inference log holds the other half of February and a week of July. Returns
    the client, the model, its logged-model info and its version. `cbpe`: the profile carries the
    calibration CBPE estimates from (the scores of the profile's own rows)."""
    import mlflow
    from xgboost import XGBClassifier

    from include.model.registry import CHAMPION, connect
    from include.monitoring.profile import PROFILE_ARTIFACT

    parts = validate_weeks(flights)
    february = read_validated([parts["feb"], parts["feb2"]])
    X, y = flights.build_features(february), flights.build_target(february)
    ref = (np.arange(len(X)) % 2 == 0) & y.notna().to_numpy()
    model = XGBClassifier(n_estimators=20, max_depth=3, enable_categorical=True, tree_method="hist")
    model.fit(X[ref], y[ref])
    client = connect(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.model_name)
    with mlflow.start_run():
        mlflow.log_metric("eval_roc_auc", 0.70)
        # the reference holds every even row, as the trainer's profile holds every training row: the
        # served odd rows (cancelled flights too, many in February's blizzard) are drawn from it
        even = np.arange(len(X)) % 2 == 0
        profile = build_profile(X[even], model.predict_proba(X[even])[:, 1], y[even].to_numpy(), flights.categorical)
        if cbpe:
            from include.monitoring.noise import calibration_map

            known = even & y.notna().to_numpy()
            profile["calibration"] = calibration_map(model.predict_proba(X[known])[:, 1], y[known].to_numpy())
        mlflow.log_dict(profile, PROFILE_ARTIFACT)
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj")
    mv = mlflow.register_model(
        info.model_uri, settings.model_name, tags={"loop.data_window": "2013-02-04T00:00:00-05:00 … 2013-02-18T00:00:00-05:00"}
    )
    client.set_registered_model_alias(settings.model_name, CHAMPION, mv.version)

    Record = request_model(flights)
    sink = InferenceLog(flights, mv.version, "blue", flush_seconds=3600)
    for name, df in (("feb", february.iloc[1::2]), ("jul", read_validated([parts["jul"]]))):
        records = [
            Record.model_validate(r).model_dump() | {"request_id": f"{name}-{i}"}
            for i, r in enumerate(request_bodies(flights, df))
        ]
        s = model.predict_proba(flights.build_features(df))[:, 1].tolist()
        sink.append(records, flights.encode_records(records), s, [x >= 0.5 for x in s])
    sink.close()
    return client, model, info, mv


def test_the_monitor_logs_each_window_to_mlflow_and_requests_one_retrain(flights, storage_root, mlflow_env):
    """With a registered champion (a small XGBoost on half of February, its profile logged like the
    trainer does): a February window → nothing; a July window → one retrain request; the same
    window again → the recorded decision; the next drifted window → suppressed, same cause."""
    import mlflow

    from include.monitoring.monitor import MonitorWindow, monitoring_experiment, run_monitor

    settings = mlflow_env
    client, model, info, mv = serve_february_and_july(flights, settings)

    jul, mid = WEEKS["jul"], WEEKS["jul"] + timedelta(days=3)
    calm = run_monitor(settings, flights, MonitorWindow(WEEKS["feb"], WEEKS["feb2"] + timedelta(weeks=1), "monitor", "t1"))
    first = run_monitor(settings, flights, MonitorWindow(jul, mid, "monitor", "t2"))
    again = run_monitor(settings, flights, MonitorWindow(jul, mid, "monitor", "t2"))
    second = run_monitor(settings, flights, MonitorWindow(mid, jul + timedelta(weeks=1), "monitor", "t3"))
    assert calm["action"] == "none", calm
    # the monitor leaves the days it checked as one part each (compaction, recorded by a manifest)
    from include.data.inference_layout import part_prefix
    from include.data.inference_log import MANIFEST, day_parts
    from include.data.storage import get_storage

    checked = jul.astimezone(UTC).date()
    assert get_storage().exists(part_prefix(flights.name, checked) + MANIFEST)
    assert len(day_parts(flights, checked)) == 1
    # July is five months after the model's data ends: past the maximum model age (six weeks) too
    assert first["action"] == "retrain" and first["cause"] == "drift;age", first
    assert again["reused"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert second["action"] == "suppressed" and "already requested" in second["reason"], second
    # A training answers the request (its data ends half a day after `mid`); a drifted window
    # inside the 24 h cooldown after it is recorded as suppressed, with the cooldown as reason.
    answered = (mid + timedelta(hours=12)).isoformat()
    mlflow.register_model(
        info.model_uri, settings.model_name, tags={"loop.data_window": f"{WEEKS['feb'].isoformat()} … {answered}"}
    )
    # The new version is not serving (no gate promoted it), so the serving model is still five
    # months old: age counts from the model that serves, the cooldown from any training.
    third = run_monitor(settings, flights, MonitorWindow(jul + timedelta(days=1), jul + timedelta(days=4), "monitor", "t4"))
    assert third["action"] == "suppressed" and "cooldown" in third["reason"] and third["cause"] == "drift;age", third
    assert "the serving model's data ends 144.0 d ago" in third["reason"], third

    exp = client.get_experiment_by_name(monitoring_experiment(settings.model_name))
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["decision.action"] for r in runs) == ["none", "retrain", "suppressed", "suppressed"]
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.metrics["psi.temp"] > 0.25 and run.data.tags["monitor.model_version"] == mv.version
    history = client.get_metric_history(first["mlflow_run_id"], "psi.temp")
    assert history[0].timestamp == int(mid.timestamp() * 1000)  # charted at the window's end
    artifacts = {a.path for a in client.list_artifacts(first["mlflow_run_id"], "monitor")}
    assert {"monitor/report.json", "monitor/decision.json", "monitor/drift.png"} <= artifacts
    assert mlflow.artifacts.load_dict(first["report_uri"])["features"]["temp"]["psi"] == run.data.metrics["psi.temp"]


def test_without_a_model_the_drift_mode_monitor_asks_for_the_first_training_once_data_suffices(
    flights, storage_root, mlflow_env, monkeypatch
):
    from include.monitoring.monitor import MonitorWindow, run_monitor
    from include.settings import get_settings

    validate_weeks(flights)  # three validated partitions
    monkeypatch.setenv("LOOP_RETRAIN_ON", "drift")
    window = MonitorWindow(WEEKS["jul"], WEEKS["jul"] + timedelta(weeks=1), dag_id="monitor", dag_run_id="b")
    for need, active, action in ((4, False, "none"), (3, True, "suppressed"), (3, False, "retrain")):
        monkeypatch.setenv("LOOP_MIN_TRAIN_PARTITIONS", str(need))
        get_settings.cache_clear()
        result = run_monitor(get_settings(), flights, window, training_active=active)
        assert result["action"] == action, result
    assert result["cause"] == "bootstrap" and result["retrain_conf"]["reason"].startswith("monitor: no model")
    monkeypatch.setenv("LOOP_RETRAIN_ON", "data")  # new data trains by itself: the monitor leaves it alone
    get_settings.cache_clear()
    assert run_monitor(get_settings(), flights, window)["action"] == "none"


def test_the_periodic_check_reads_served_traffic_only_up_to_the_newest_event(flights, storage_root, mlflow_env):
    """Issue 12: the scheduled check of served traffic. Its window is the LOOP_MONITOR_WINDOW_DAYS
    days up to the end of the newest logged event's day (event clock, New York days); no label is
    joined even where they have landed; a partial window is judged on the days and rows it has;
    one decision per DAG run, in the same experiment as the labelled checks."""
    import mlflow

    from include.model.engines import fit
    from include.model.params import TrainParams
    from include.model.registry import CHAMPION, connect
    from include.monitoring.monitor import check_served_traffic
    from include.monitoring.profile import PROFILE_ARTIFACT, reference_profile

    settings = mlflow_env
    parts = validate_weeks(flights)  # July's labels have landed too
    train, held_out = read_validated([parts["feb"]]), read_validated([parts["feb2"]])
    X, y = flights.build_features(train), flights.build_target(train)
    known = y.notna().to_numpy()
    model = fit(X[known], y[known].astype(int), TrainParams(n_estimators=30), flights.categorical)
    mlflow.set_experiment(settings.model_name)
    with mlflow.start_run():
        mlflow.log_metric("eval_roc_auc", 0.70)
        mlflow.log_dict(reference_profile(model, flights, train, held_out), PROFILE_ARTIFACT)
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj")
    mv = mlflow.register_model(
        info.model_uri,
        settings.model_name,
        tags={"loop.data_window": f"{WEEKS['feb'].isoformat()} … {WEEKS['feb2'].isoformat()}"},
    )
    connect(settings.mlflow_tracking_uri).set_registered_model_alias(settings.model_name, CHAMPION, mv.version)

    run = {"dag_id": "monitor", "dag_run_id": "scheduled__1"}
    nothing = check_served_traffic(settings, flights, **run)
    assert nothing["action"] == "none" and nothing["reason"] == "no served flights logged yet"

    july = read_validated([parts["jul"]])
    days = july["time_hour"].dt.tz_convert(NY).dt.date
    served = july[days < WEEKS["jul"].date() + timedelta(days=3)]  # three days of the week served so far
    Record = request_model(flights)
    records = [
        Record.model_validate(r).model_dump() | {"request_id": f"jul-{i}"} for i, r in enumerate(request_bodies(flights, served))
    ]
    s = model.predict_proba(flights.build_features(served))[:, 1].tolist()
    sink = InferenceLog(flights, mv.version, "blue", flush_seconds=3600)
    sink.append(records, flights.encode_records(records), s, [x >= 0.5 for x in s])
    sink.close()

    first = check_served_traffic(settings, flights, **run)
    report = mlflow.artifacts.load_dict(first["report_uri"])
    end = WEEKS["jul"] + timedelta(days=3)
    assert report["window"] == [(end - timedelta(days=7)).isoformat(), end.isoformat()]
    assert report["n"] == len(served) and report["days"] == 3  # partial: three days, thresholds at that size
    assert report["labels"]["labelled"] == 0 and report["performance"] == {}  # served traffic only
    assert 0.5 < report["estimated"]["roc_auc"] < 1 and all("threshold" in f for f in report["features"].values())
    client = connect(settings.mlflow_tracking_uri)
    tags = client.get_run(first["mlflow_run_id"]).data.tags
    assert tags["monitor.kind"] == "served" and tags["decision.action"] == first["action"]
    again = check_served_traffic(settings, flights, **run)  # a retry of the same DAG run: its decision
    later = check_served_traffic(settings, flights, dag_id="monitor", dag_run_id="scheduled__2")
    assert again["reused"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert not later["reused"] and later["mlflow_run_id"] != first["mlflow_run_id"]


def test_one_alert_per_window_and_cause_updated_or_quiet_after_and_resolved_once(flights, storage_root, mlflow_env):
    """Alertmanager's grouping, with the state in MLflow: the labelled check of a drifted July window
    fires; a served-traffic check of the same window finds the same drift and stays quiet; once the
    thresholds no longer see it, the window resolves, once. Each alert carries CBPE's record on this
    version (its February window, labelled, checked first)."""
    from include.alerting.alerts import read_alerts
    from include.monitoring.monitor import MonitorWindow, monitoring_experiment, run_monitor
    from include.monitoring.notify import GROUP, STATUS
    from include.settings import with_overrides

    settings = mlflow_env
    client, _, _, mv = serve_february_and_july(flights, settings, cbpe=True)
    jul, mid = WEEKS["jul"], WEEKS["jul"] + timedelta(days=3)
    calm = run_monitor(settings, flights, MonitorWindow(WEEKS["feb"], WEEKS["feb2"] + timedelta(weeks=1), "monitor", "g0"))
    fired = run_monitor(settings, flights, MonitorWindow(jul, mid, "monitor", "g1"))
    repeated = run_monitor(settings, flights, MonitorWindow(jul, mid, "monitor", "g2", kind="served"))
    blind = with_overrides(
        settings, {"LOOP_DRIFT_ATTRIBUTION_SHARE": "1.0", "LOOP_ESTIMATE_MARGIN": "1.0", "LOOP_DECAY_MARGIN": "1.0"}
    )
    cleared = run_monitor(blind, flights, MonitorWindow(jul, mid, "monitor", "g3", kind="served"))
    still = run_monitor(blind, flights, MonitorWindow(jul, mid, "monitor", "g4", kind="served"))
    assert calm["cause"] == "" and "drift" in fired["cause"] and "drift" in repeated["cause"]
    assert cleared["cause"] in ("", "age") and still["cause"] == cleared["cause"]

    mine = [a for a in read_alerts(settings) if a["details"].get("group", "").startswith(f"{settings.model_name} ")]
    assert [(a["kind"], a["details"]["status"]) for a in mine] == [("drift", "firing"), ("resolved", "resolved")]
    group = f"{settings.model_name} v{mv.version} {jul.date()}…{mid.date()}"
    assert {a["details"]["group"] for a in mine} == {group}
    statuses = [client.get_run(r["mlflow_run_id"]).data.tags for r in (fired, repeated, cleared, still)]
    assert [t[STATUS] for t in statuses] == ["firing", "quiet", "resolved", "quiet"] and {t[GROUP] for t in statuses} == {group}

    # CBPE's record on v1: February's estimate against its realised ROC AUC, in the record and the alert
    feb = client.get_run(calm["mlflow_run_id"]).data.metrics
    bias = feb["estimated.roc_auc"] - feb["live.roc_auc"]
    recorded = client.get_run(fired["mlflow_run_id"]).data.metrics
    assert recorded["estimated.bias_windows"] == 1 and recorded["estimated.bias.roc_auc"] == pytest.approx(bias, abs=1e-9)
    assert mine[0]["details"]["cbpe_bias"] == pytest.approx(bias, abs=1e-9)
    assert (
        f"{abs(bias):.3f} {'high' if bias > 0 else 'low'} on average over v{mv.version}'s 1 earlier labelled window"
        in mine[0]["message"]
    )
    exp = client.get_experiment_by_name(monitoring_experiment(settings.model_name))
    assert len(client.search_runs([exp.experiment_id])) == 5
