"""DAG integrity and policy: every DAG imports cleanly and fast, and follows the house rules."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from include.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = ("xgboost", "mlflow", "great_expectations", "bentoml", "sklearn", "matplotlib")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"ingest_validate", "train", "deploy", "rollback", "monitor", "revalidate"} <= set(dagbag.dag_ids)


def test_every_dag_has_tags_owner_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no docstring"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has the default owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
            callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [task.on_failure_callback]
            assert any(type(cb).__name__ == "AlertNotifier" for cb in callbacks), f"{dag_id}.{task.task_id} alerts nobody"


@pytest.mark.parametrize("path", DAG_FILES, ids=[p.name for p in DAG_FILES])
def test_no_heavy_imports_at_parse_time(path):
    """Parsing a DAG file must not import the ML stack (the dag-processor parses every few seconds)."""
    code = (
        "import json, sys, runpy, time; import airflow.sdk; t = time.perf_counter(); "
        f"runpy.run_path({str(path)!r}); "
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], 'seconds': time.perf_counter() - t}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"{path.name} imports {result['heavy']} at parse time"
    print(f"{path.name}: parsed in {result['seconds']:.2f}s after Airflow's own import")


def test_train_schedule_coalesces_asset_events(dagbag):
    from include.airflow_glue import VALIDATED_DATA

    dag = dagbag.dags["train"]
    assert dag.max_active_runs == 1, "one run at a time is what makes queued events coalesce"
    assert VALIDATED_DATA.name in repr(dag.timetable.asset_condition)


@pytest.mark.parametrize(
    "conf,field",
    [
        ({"max_depth": 100}, "max_depth"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"window_weeks": "eight"}, "window_weeks"),
        ({"as_of": "yesterday"}, "as_of"),
        ({"reason": "x" * 501}, "reason"),
        ({"distributed": "please"}, "distributed"),
    ],
)
def test_invalid_form_values_are_rejected_before_any_task_runs(dagbag, conf, field):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["train"].params)
    with pytest.raises(ParamValidationError, match=field):
        params.update(conf)
        params.validate()


def test_default_form_values_are_valid(dagbag):
    from include.model.params import TrainParams

    params = dagbag.dags["train"].params
    params.validate()
    TrainParams.from_mapping(dict(params))  # the form's defaults are accepted by the trainer too


def test_deploy_runs_on_champion_events_one_rollout_at_a_time(dagbag):
    from include.airflow_glue import CHAMPION_MODEL, DEPLOYMENT

    dag = dagbag.dags["deploy"]
    assert dag.max_active_runs == 1
    assert CHAMPION_MODEL.name in repr(dag.timetable.asset_condition)
    order = ["claim_slots", "plan", "build_bento", "start_candidate", "infra_validate", "canary", "finalize"]
    for upstream, downstream in itertools.pairwise(order):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert [o.name for o in dag.get_task("finalize").outlets] == [DEPLOYMENT.name]


@pytest.mark.parametrize("dag_id", ["deploy", "rollback"])
def test_a_rollout_waits_for_the_serving_lease_without_holding_a_worker(dagbag, dag_id):
    """deploy and rollback share the serving lease; the wait is a sensor in reschedule mode (a
    waiting task that held the `serving` worker's only slot would block the rollout it waits for),
    and a step that fails for good gives the lease back."""
    from include.airflow_glue import ReleaseRolloutLease

    dag = dagbag.dags[dag_id]
    claim = dag.get_task("claim_slots")
    assert claim.mode == "reschedule" and not claim.upstream_task_ids
    assert claim.timeout == get_settings().rollout_lock_wait_seconds
    for task_id in ("build_bento", "start_candidate", "infra_validate", "canary", "finalize"):
        assert any(isinstance(cb, ReleaseRolloutLease) for cb in dag.get_task(task_id).on_failure_callback), task_id


@pytest.mark.parametrize(
    ("conf", "field"),
    [({}, "version"), ({"version": "latest"}, "version"), ({"version": "3", "reason": "x" * 501}, "reason")],
)
def test_rollback_form_requires_a_version_number(dagbag, conf, field):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags["rollback"].params)
    with pytest.raises(ParamValidationError, match=field):
        params.update(conf)
        params.validate()
    ok = ParamsDict(dagbag.dags["rollback"].params)
    ok.update({"version": "3", "reason": "v4 mislabels evening flights"})
    assert ok.validate()["version"] == "3"


def test_monitor_runs_on_validated_data_and_can_only_request_training_through_the_gate(dagbag):
    from include.airflow_glue import VALIDATED_DATA

    dag = dagbag.dags["monitor"]
    assert VALIDATED_DATA.name in repr(dag.timetable.asset_condition) and dag.max_active_runs == 1
    trigger = dag.get_task("request_retrain")
    assert trigger.trigger_dag_id == "train" and trigger.upstream_task_ids == {"needs_retraining", "check"}
    # A cleared or repeated monitor run must find the train run its decision started, not start another:
    # the run id comes from the decision, an existing run skips the task, and is never reset.
    run_id = trigger.trigger_run_id
    assert run_id is not None, "request_retrain without trigger_run_id starts a new train run on every rerun"
    assert (run_id.operator.task_id, run_id.key) == ("check", "retrain_run_id"), run_id
    assert trigger.skip_when_already_exists and not trigger.reset_dag_run
    # what the monitor sends is a valid train form: the gate and the rollout follow as for any run
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dagbag.dags["train"].params)
    params.update({"reason": "monitor 2013-07-08…2013-07-11: 9 features drifted", "report_uri": "runs:/abc/monitor/report.json"})
    params.validate()


def test_monitor_also_checks_served_traffic_on_its_own_clock(dagbag):
    """Issue 12: besides validated-data events, the monitor runs every LOOP_MONITOR_EVERY_MINUTES of
    wall clock (the periodic check of served traffic, before labels land)."""
    from datetime import timedelta

    dag = dagbag.dags["monitor"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    every = timedelta(minutes=get_settings().monitor_every_minutes)
    assert type(dag.timetable.timetable).__name__ == "DeltaTriggerTimetable" and dag.timetable.timetable.delta == every
    from include.airflow_glue import VALIDATED_DATA

    assert VALIDATED_DATA.name in repr(dag.timetable.asset_condition)


@pytest.mark.parametrize(
    ("conf", "field"),
    [
        ({}, "partition"),
        ({"partition": "2013-01-29"}, "partition"),
        ({"partition": "dt=2013-01-29T0500Z", "refetch": "yes"}, "refetch"),
    ],
)
def test_revalidate_form_names_a_quarantined_partition_and_emits_validated_data(dagbag, conf, field):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from include.airflow_glue import VALIDATED_DATA

    dag = dagbag.dags["revalidate"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual only
    with pytest.raises(ParamValidationError, match=field):
        params = ParamsDict(dag.params)
        params.update(conf)
        params.validate()
    ok = ParamsDict(dag.params)
    ok.update({"partition": "dt=2013-01-29T0500Z", "refetch": True, "reason": "upstream re-sent the truncated file"})
    assert ok.validate()["refetch"] is True
    assert [o.name for o in dag.get_task("validate_again").outlets] == [VALIDATED_DATA.name]


def test_every_train_run_is_admitted_by_the_retrain_guards_first(dagbag):
    """A train run the schedule did not start (monitor, alert webhook, UI, REST) reaches the trainer
    only through `admit`, a short circuit; one run at a time makes the check and the training one step."""
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["train"]
    assert dag.max_active_runs == 1, "admission is atomic only while one train run runs at a time"
    assert {t.task_id for t in dag.roots} == {"admit"}
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    admit = dag.get_task("admit")
    assert isinstance(admit, ShortCircuitOperator) and admit.ignore_downstream_trigger_rules
    assert admit.downstream_task_ids == {"train_challenger"}
    assert dag.params["force"] is False
    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match="force"):
        params.update({"force": "yes"})
        params.validate()
