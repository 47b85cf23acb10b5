"""The second use case, card payments, runs the whole loop through the same machinery as the
flights: the gate (one quarantined batch), training, the champion gate, a bento build, infra
validation, served requests and one monitor window. Nothing here touches a machinery module: the
use case is selected the way a user selects theirs, with LOOP_USECASE."""

from __future__ import annotations

import pytest
import requests

from include.data.gate import BatchQuarantined, validate_partition
from include.data.partitions import Partition, land_partition, list_validated, quarantined_batches
from include.local.faults import plant_fault
from include.local.stack import free_port
from include.local.traffic import interval_records, replay
from include.model.gate import run_champion_gate
from include.model.params import TrainParams
from include.model.training import train_candidate
from include.monitoring.monitor import MonitorWindow, run_monitor
from include.monitoring.profile import log_reference_profile
from include.rollout.infra import golden_records
from include.rollout.rollout import plan_rollout, rollout_version
from include.rollout.slots import Serving
from include.settings import get_settings
from include.usecases import get_usecase

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DAYS = 12
FAULTY_DAY = 5


@pytest.fixture(scope="module")
def payments(tmp_path_factory, mlflow_server):
    state = tmp_path_factory.mktemp("payments")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "LOOP_USECASE": "payments",
            "LOOP_STATE_DIR": str(state),
            "LOOP_STORAGE_URI": str(state / "zones"),
            "MLFLOW_TRACKING_URI": mlflow_server,
            "LOOP_MODEL_NAME": "it-payments",
            "LOOP_SERVING_PORT": str(free_port()),
            "LOOP_TRAEFIK_METRICS_PORT": str(free_port()),
            "LOOP_SLOT_PORTS": f"{free_port()},{free_port()}",
            "LOOP_CANARY_BAKE_SECONDS": "2",
            "LOOP_GOLDEN_ROWS": "50",
            "LOOP_GOLDEN_LATENCY_MS": "1000",
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        settings, usecase = get_settings(), get_usecase()
        yield settings, usecase
        Serving(settings).stack.stop()
    get_settings.cache_clear()


def test_payments_run_the_loop_through_the_same_machinery(payments):
    settings, usecase = payments
    assert usecase.name == "payments" and usecase.calendar.cadence == "daily"
    intervals = usecase.calendar.intervals()

    # the gate: daily partitions, one delivered in cents instead of euros
    for i, (start, end) in enumerate(intervals[:DAYS]):
        partition = Partition(usecase.name, start, end)
        if i == FAULTY_DAY:
            plant_fault(usecase, partition, "amount_in_cents")
        else:
            land_partition(usecase, partition, replay=True)
        if i == FAULTY_DAY:
            with pytest.raises(BatchQuarantined, match=r"expect_column_mean_to_be_between\[amount_eur\]"):
                validate_partition(usecase, partition, max_bad_row_share=settings.max_bad_row_share)
        else:
            validate_partition(usecase, partition, max_bad_row_share=settings.max_bad_row_share)
    assert len(list_validated(usecase.name)) == DAYS - 1
    [quarantined] = quarantined_batches(usecase.name)
    assert quarantined["partition"] == Partition(usecase.name, *intervals[FAULTY_DAY]).id

    # training, the reference profile, the champion gate
    out = train_candidate(
        usecase, TrainParams(window_weeks=2, n_estimators=150, max_depth=4), settings, dag_id="train", dag_run_id="payments_1"
    )
    assert out["model_name"] == "it-payments"
    log_reference_profile(settings.mlflow_tracking_uri, usecase, out["model_name"], out["version"])
    gate = run_champion_gate(usecase, settings, out["model_name"], out["version"])
    assert gate["promoted"], gate["reason"]

    # a bento, infra validation and the canary, through the rollout path the deploy DAG runs
    ref = plan_rollout(settings, usecase, None)
    live = rollout_version(settings, usecase, ref, "payments-test")
    assert live["model_version"] == out["version"] and live["bento_tag"] == f"it-payments-service:v{out['version']}"

    # served requests: a payment scores; a wrong one is refused naming the field
    entry = Serving(settings).proxy.entry_url
    record = golden_records(settings, usecase, 1)[0]
    r = requests.post(f"{entry}/predict", json=record, timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == out["version"] and 0 <= r.json()["probability"] <= 1
    bad = requests.post(f"{entry}/predict", json={**record, "channel": "fax"}, timeout=10)
    assert bad.status_code == 400 and "channel" in bad.text

    # the next day's payments are scored before the day lands with its chargebacks...
    start, end = intervals[DAYS]
    report = replay(entry, interval_records(usecase, start, end), clients=2)
    assert not report.failed
    Serving(settings).stack.stop_one(f"slot-{live['slot']}")  # shutdown flushes the inference log
    land_partition(usecase, Partition(usecase.name, start, end), replay=True)
    validate_partition(usecase, Partition(usecase.name, start, end), max_bad_row_share=settings.max_bad_row_share)

    # ...and the monitor checks that window of the live model, with its labels
    result = run_monitor(settings, usecase, MonitorWindow(start, end, dag_id="monitor", dag_run_id="payments_m1"))
    assert result["model_version"] == out["version"] and result["action"] in ("none", "retrain", "suppressed")
    import mlflow

    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result["mlflow_run_id"])
    assert run.data.metrics["rows"] == len(report.outcomes)
    assert run.data.metrics["labelled"] == len(report.outcomes)
    assert {f"psi.{f}" for f in usecase.features} <= set(run.data.metrics)
    assert 0.5 < run.data.metrics["live.roc_auc"] <= 1
