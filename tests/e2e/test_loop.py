"""The loop through a real Airflow scheduler, dag-processor and API server, a real MLflow server,
and the serving runtime (Traefik and bento slots), on free loopback ports: what `make demo` does,
on five weeks. Midway through the catch-up the scheduler and the dag-processor are SIGKILLed and
started again, as a lost host would do to them."""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pytest
import requests

from include.alerting.alerts import read_alerts
from include.data.inference_log import read_inference_log
from include.data.partitions import list_validated, quarantined_batches
from include.local.demo import count_intervals, plant_faults, start_stack, wait_until_idle
from include.local.stack import Ports, airflow_command, airflow_env, free_port
from include.local.traffic import interval_records, replay
from include.model.registry import CHAMPION, alias_version, connect
from include.monitoring.monitor import monitoring_experiment
from include.rollout.infra import golden_records
from include.rollout.processes import Stack, kill_tree
from include.settings import get_settings
from include.usecases import get_calendar, get_usecase
from tests.support.sockets import listening_sockets

# The set-up replays five weeks through the whole stack: beside the other test processes of `make test`
# it can take longer than the suite's 900 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]


WEBHOOK_TOKEN = secrets.token_urlsafe(24)
RESTART: dict = {}
"""What `restart_scheduler_mid_catch_up` did: interval runs finished before the kill, the time."""


def restart_scheduler_mid_catch_up(client, stack: Stack, env: dict[str, str], intervals: int) -> dict:
    """Once the first interval has finished (and not all have), SIGKILL the scheduler and the
    dag-processor with their children (the LocalExecutor's task processes), then start them again."""
    deadline = time.monotonic() + 600
    while True:
        done = [r for r in client.runs("ingest_validate") if r["state"] in ("success", "failed")]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        kill_tree(stack.running()[name])
    for name in ("scheduler", "dag-processor"):
        stack.start(f"airflow-{name}", airflow_command(name), env)
    return {"finished_before_kill": len(done), "intervals": intervals, "at": time.time()}


@pytest.fixture(scope="module")
def alert_receiver():
    """A loopback HTTP endpoint standing in for the team's alert webhook (the HTTP provider's
    notifier posts to it through the Airflow connection `loop_alerts`)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append({"path": self.path, "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], received
    server.shutdown()


@pytest.fixture(scope="module")
def loop(tmp_path_factory, alert_receiver):
    state = tmp_path_factory.mktemp("e2e-state")
    ports = Ports(airflow=free_port(), mlflow=free_port())
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "LOOP_STATE_DIR": str(state),
            "LOOP_STORAGE_URI": str(state / "data"),
            "LOOP_START_DATE": "2013-06-04",
            "LOOP_END_DATE": "2013-07-02",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
            "LOOP_MODEL_NAME": "e2e-flights",
            "LOOP_SERVING_PORT": str(free_port()),
            "LOOP_TRAEFIK_METRICS_PORT": str(free_port()),
            "LOOP_SLOT_PORTS": f"{free_port()},{free_port()}",
            "LOOP_CANARY_BAKE_SECONDS": "3",
            "LOOP_INFERENCE_LOG_FLUSH_SECONDS": "5",  # the traffic test waits for the log, not a minute
            "LOOP_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "LOOP_ALERT_HTTP_CONN_ID": "loop_alerts",
            "LOOP_ALERT_HTTP_ENDPOINT": "/hooks/loop",
            "AIRFLOW_CONN_LOOP_ALERTS": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": alert_receiver[0]}),
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        stack = Stack(state)
        try:
            client = start_stack(
                settings, ports, stack, before_scheduler=lambda: plant_faults(get_usecase(), {2: "renamed_column"})
            )
            intervals = count_intervals(get_calendar())
            RESTART.update(restart_scheduler_mid_catch_up(client, stack, airflow_env(settings, ports), intervals))
            finished = wait_until_idle(client, intervals, timeout=900, poll=5)
            yield settings, client, finished, stack
        finally:
            stopped = stack.stop()
            assert set(stopped) >= {"mlflow", "airflow-scheduler", "airflow-dag-processor", "airflow-api-server", "traefik"}
            assert not stack.running()
    get_settings.cache_clear()


def test_the_scheduler_runs_every_interval_and_quarantines_the_broken_one(loop):
    settings, client, finished, stack = loop
    assert finished, f"the loop did not finish; logs in {stack.log_dir}"
    runs = client.runs("ingest_validate")
    assert len(runs) == 5
    failed = [r for r in runs if r["state"] == "failed"]
    assert [r["data_interval_start"][:10] for r in failed] == ["2013-06-18"]
    assert len(list_validated("flights")) == 4
    [batch] = quarantined_batches("flights")
    assert "expect_table_columns_to_match_set" in batch["failures"][0] and "arrival_delay" in batch["failures"][0]


def test_a_scheduler_and_dag_processor_killed_mid_catch_up_validate_every_interval_exactly_once(loop):
    settings, client, finished, _ = loop
    assert finished
    assert 1 <= RESTART["finished_before_kill"] < RESTART["intervals"], f"the kill did not land mid catch-up: {RESTART}"
    runs = client.runs("ingest_validate")
    starts = [r["data_interval_start"] for r in runs]
    assert len(runs) == RESTART["intervals"] and len(set(starts)) == len(starts), "one run per interval, none twice"
    events = client.get("assets/events", source_dag_id="ingest_validate", limit=100)["asset_events"]
    partitions = [e["extra"]["partition"] for e in events]
    print(
        f"\nscheduler + dag-processor killed after {RESTART['finished_before_kill']} of {RESTART['intervals']} intervals; "
        f"validated-data events: {sorted(partitions)}"
    )
    assert sorted(partitions) == sorted({p for p in partitions}), "a partition was announced as validated twice"
    assert len(partitions) == len(list_validated("flights")) == RESTART["intervals"] - 1  # one quarantined


def test_training_ran_on_asset_events_and_a_champion_exists(loop):
    settings, client, _, _ = loop
    runs = client.runs("train")
    asset_runs = [r for r in runs if r["run_type"] == "asset_triggered"]
    assert asset_runs and all(r["state"] == "success" for r in asset_runs)
    assert len(asset_runs) <= 4, "one training per validated partition at most; queued events coalesce"
    mlc = connect(settings.mlflow_tracking_uri)
    champion = alias_version(mlc, settings.model_name, CHAMPION)
    assert champion is not None and champion.tags["gate.decision"] == "promote"
    lineage = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/lineage/partitions.json")
    assert "dt=2013-06-18T0400Z" not in json.dumps(lineage), "the quarantined week must never be trained on"


def test_each_new_champion_was_rolled_out_and_serves_on_the_entry(loop):
    settings, client, _, _ = loop
    runs = client.runs("deploy")
    assert runs and all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    champion = alias_version(connect(settings.mlflow_tracking_uri), settings.model_name, CHAMPION)
    assert champion.tags["deploy.dag_run_id"] in {r["dag_run_id"] for r in runs}
    [record] = golden_records(settings, get_usecase(), 1)
    r = requests.post(f"http://127.0.0.1:{settings.serving_port}/predict", json=record, timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == champion.version


def test_the_rollback_dag_puts_a_chosen_version_back_from_a_rest_trigger(loop):
    settings, client, _, _ = loop
    mlc = connect(settings.mlflow_tracking_uri)
    live = alias_version(mlc, settings.model_name, CHAMPION).version
    versions = [v.version for v in mlc.search_model_versions(f"name = '{settings.model_name}'")]
    target = max((v for v in versions if v != live), key=int, default=live)
    r = client.trigger("rollback", {"version": target, "reason": "e2e: put v" + target + " back"})
    assert r.status_code == 200, r.text
    assert client.trigger("rollback", {"version": "latest"}).status_code == 400
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=5)
    run = client.get(f"dags/rollback/dagRuns/{r.json()['dag_run_id']}")
    assert run["state"] == "success"
    [record] = golden_records(settings, get_usecase(), 1)
    answer = requests.post(f"http://127.0.0.1:{settings.serving_port}/predict", json=record, timeout=10).json()
    assert answer["model_version"] == target
    restored = alias_version(mlc, settings.model_name, CHAMPION)
    assert restored.version == target and restored.tags["rollback.reason"] == f"e2e: put v{target} back"


def test_make_rerun_triggers_through_the_rest_api_and_reports_refusals(loop, capsys):
    from include.local.rerun import main as rerun
    from include.rollout.slots import Serving

    settings, client, _, _ = loop
    url = client.base
    live = Serving(settings).live()["model_version"]  # a rollback to the live version is a quick no-op run
    assert rerun(["rollback", "--url", url, "--reason", "e2e: rerun CLI", "--conf", json.dumps({"version": live})]) == 0
    out = capsys.readouterr().out
    assert "triggered rollback run" in out and f"{url}/dags/rollback/runs/" in out
    assert rerun(["train", "--url", url, "--conf", '{"max_depth": 100}']) == 1
    assert "HTTP 400" in capsys.readouterr().err
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=5)


def test_an_invalid_form_value_is_rejected_by_the_api_before_any_task_runs(loop):
    _, client, _, _ = loop
    before = len(client.runs("train"))
    r = client.trigger("train", {"max_depth": 100})
    assert r.status_code == 400 and "max_depth" in r.text
    assert len(client.runs("train")) == before


def test_an_alert_driven_rerun_through_the_rest_api(loop):
    settings, client, _, _ = loop
    # within the retrain cooldown of the catch-up's trainings: a person forces it
    r = client.trigger("train", {"reason": "alert 1234: late-rate drift", "n_estimators": 50, "force": True})
    assert r.status_code == 200, r.text
    run_id = r.json()["dag_run_id"]
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=5)
    run = client.get(f"dags/train/dagRuns/{run_id}")
    assert run["state"] == "success"
    mlc = connect(settings.mlflow_tracking_uri)
    runs = mlc.search_runs(
        [mlc.get_experiment_by_name(settings.model_name).experiment_id], filter_string=f"tags.`airflow.dag_run_id` = '{run_id}'"
    )
    # one challenger, and its refit if the gate accepted it: both say why, with the form's values
    assert sorted(r.data.tags["loop.stage"] for r in runs) in (["challenger"], ["challenger", "refit"]), runs
    for mlrun in runs:
        assert mlrun.data.tags["loop.reason"] == "alert 1234: late-rate drift"
        assert mlrun.data.params["n_estimators"] == "50"


def test_a_quarantine_alert_reaches_the_configured_webhook_once_with_working_links(loop, alert_receiver):
    settings, client, _, _ = loop
    _, received = alert_receiver
    assert received and {r["path"] for r in received} == {"/hooks/loop"}
    alerts = [r["body"] for r in received]
    quarantined = [a for a in alerts if a["kind"] == "quarantined"]
    assert len(quarantined) == 1, [a["message"] for a in alerts]  # and no second, generic task_failed alert
    [alert] = quarantined
    assert "2013-06-18" in alert["message"] and "arrival_delay" in alert["message"]
    assert not [a for a in alerts if a["kind"] == "task_failed" and "2013-06-18" in a["message"]]

    link = urlparse(alert["links"]["airflow"])
    assert f"{link.scheme}://{link.netloc}" == client.base
    _, dags, dag_id, runs, run_id, tasks, task_id = link.path.split("/")
    assert (dags, runs, tasks) == ("dags", "runs", "tasks")
    ti = client.get(f"dags/{dag_id}/dagRuns/{unquote(run_id)}/taskInstances/{task_id}")
    assert (ti["dag_id"], ti["task_id"], ti["state"]) == ("ingest_validate", "validate", "failed")
    assert requests.get(alert["links"]["airflow"], timeout=10).status_code == 200  # the UI page itself
    report = Path(unquote(urlparse(alert["links"]["report"]).path))  # a file:// URI on the embedded runtime
    assert report.exists() and "QUARANTINED" in report.read_text()
    assert alert in read_alerts(settings), "the local sink holds the same alert"


def test_a_week_of_client_traffic_is_served_logged_and_checked_by_the_monitor(loop):
    """Clients send days after the replayed data (2013-07-09 … 07-12: newer than the rollouts'
    golden records, so none is older than the log's lateness bound) to the serving entry, as `make
    demo`'s replay does: every request is answered, every record reaches the inference log,
    and the monitor's periodic check (triggered with no dates) scores that traffic, so the
    model-health view has a window to chart."""
    settings, client, _, _ = loop
    usecase = get_usecase()
    start, end = datetime(2013, 7, 9, tzinfo=UTC), datetime(2013, 7, 12, tzinfo=UTC)  # three days: enough to score
    records = interval_records(usecase, start, end)
    sent_from = datetime.now(UTC)

    def logged() -> int:
        """Rows served since the replay began (the rollouts' golden records, served before, are logged too)."""
        log = read_inference_log(usecase, start, end)
        return int((log["served_at"] >= sent_from).sum()) if len(log) else 0

    report = replay(f"http://127.0.0.1:{settings.serving_port}", records, clients=4, batch_size=50)
    assert len(report.outcomes) == -(-len(records) // 50) and not report.failed, report.summary()
    deadline = time.monotonic() + 120  # the slots' writers write every LOOP_INFERENCE_LOG_FLUSH_SECONDS
    while (n := logged()) < len(records) and time.monotonic() < deadline:
        time.sleep(1)
    assert n == len(records)

    r = client.trigger("monitor", {})
    assert r.status_code == 200, r.text
    run_id = r.json()["dag_run_id"]
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=2)
    assert client.get(f"dags/monitor/dagRuns/{run_id}")["state"] == "success"
    mlc = connect(settings.mlflow_tracking_uri)
    exp = mlc.get_experiment_by_name(monitoring_experiment(settings.model_name))
    (check,) = mlc.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.dag_run_id` = '{run_id}'")
    assert check.data.tags["monitor.kind"] == "served" and check.data.metrics["rows"] > 0
    assert 0.5 < check.data.metrics["estimated.roc_auc"] < 1


def test_the_alert_webhook_starts_the_mapped_dag_once_and_refuses_strangers(loop):
    settings, client, _, _ = loop
    url = f"{client.base}/loop/alerts"
    started = datetime.now(UTC).isoformat()
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "loop",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "E2ELateRateDrift", "dag_id": "monitor", "severity": "warning"},
                "annotations": {
                    "summary": "late rate up in the last week",
                    "loop_conf": json.dumps({"window_start": "2013-06-25", "window_end": "2013-07-02"}),
                },
                "startsAt": started,
                "fingerprint": "e2e0f1ngerpr1nt",
            }
        ],
    }
    before = len(client.runs("monitor"))
    assert requests.post(url, json=body, timeout=10).status_code == 401
    assert requests.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert len(client.runs("monitor")) == before

    auth = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    first = requests.post(url, json=body, headers=auth, timeout=30)
    assert first.status_code == 200, first.text
    [created] = first.json()["runs"]
    assert created["status"] == "created" and created["dag_run_id"].startswith("alert__e2e0f1ngerpr1nt__")
    repeat = requests.post(url, json=body, headers=auth, timeout=30)
    assert repeat.status_code == 200 and repeat.json()["runs"][0]["status"] == "exists"
    assert requests.post(url, json={"alerts": "nope"}, headers=auth, timeout=10).status_code == 422
    invalid = dict(body["alerts"][0], fingerprint="e2einvalid", labels={"dag_id": "train"})
    invalid["annotations"] = {"loop_conf": json.dumps({"max_depth": 100})}
    trains = len(client.runs("train"))
    refused = requests.post(url, json=dict(body, alerts=[invalid]), headers=auth, timeout=30).json()["runs"]
    assert refused[0]["status"] == "invalid" and "max_depth" in refused[0]["detail"]  # the DAG's own form refused it
    assert len(client.runs("train")) == trains

    runs = [r for r in client.runs("monitor") if r["dag_run_id"] == created["dag_run_id"]]
    assert len(runs) == 1 and len(client.runs("monitor")) == before + 1
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=5)
    run = client.get(f"dags/monitor/dagRuns/{created['dag_run_id']}")
    assert run["state"] == "success", run
    assert run["conf"]["window_start"] == "2013-06-25" and run["conf"]["reason"].startswith("alert E2ELateRateDrift")


def test_every_process_of_the_embedded_stack_listens_on_loopback_only(loop):
    """Airflow (with the scheduler's task processes), MLflow, Traefik, the slots and the guard, and
    every child they started: nothing is reachable from another host."""
    settings, client, _, stack = loop
    listeners = listening_sockets(stack.running().values())
    ports = {x.port for x in listeners}
    expected = {urlparse(client.base).port, urlparse(settings.mlflow_tracking_uri).port, settings.serving_port}
    assert expected <= ports, f"the listing misses the stack's own ports {expected - ports}: {[str(x) for x in listeners]}"
    exposed = [str(x) for x in listeners if not x.loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_the_model_health_view_is_in_the_ui_behind_its_login_and_agrees_with_the_registry(loop):
    """The plugin's external view is in the UI's navigation; its app refuses an anonymous caller and,
    signed in, shows what serves, every version and every monitored window as MLflow records them."""
    from include.model.registry import LIVE

    settings, client, _, _ = loop
    plugins = client.get("plugins")["plugins"]
    views = [v for p in plugins for v in p.get("external_views", [])]
    assert any(v["name"] == "Model health" and v["href"] == "model-health/" and v["destination"] == "nav" for v in views), views
    for path in ("model-health/", "model-health/api"):
        assert requests.get(f"{client.base}/{path}", timeout=10).status_code in (401, 403)

    r = client.session.get(f"{client.base}/model-health/api", timeout=30)  # the session holds the API token (client.get above)
    assert r.status_code == 200, r.text
    doc = r.json()
    mlc = connect(settings.mlflow_tracking_uri)
    live, champion = alias_version(mlc, settings.model_name, LIVE), alias_version(mlc, settings.model_name, CHAMPION)
    assert doc["serving"]["version"] == live.version and doc["serving"]["champion"] == champion.version
    assert doc["serving"]["weights"] == {doc["serving"]["slot"]: 100}
    registered = sorted((v.version for v in mlc.search_model_versions(f"name = '{settings.model_name}'")), key=int, reverse=True)
    assert [v["version"] for v in doc["versions"]] == registered
    assert {"champion", "live"} <= set(next(v for v in doc["versions"] if v["version"] == live.version)["aliases"])
    promoted = [v for v in doc["versions"] if v["decision"] == "promote" and not v["refit_of"] and v["champion_version"]]
    assert all(v["interval"] and v["interval"][0] <= v["interval"][1] for v in promoted)
    # every monitored window, with the realised ROC AUC its labelled check logged
    exp = mlc.get_experiment_by_name(monitoring_experiment(settings.model_name))  # None until the monitor has checked a window
    logged = {
        (run.data.tags["monitor.window_start"], run.data.tags.get("monitor.kind")): run.data.metrics.get("live.roc_auc")
        for run in sorted(mlc.search_runs([exp.experiment_id]) if exp else [], key=lambda run: run.info.start_time)
        if "decision.action" in run.data.tags
    }
    assert {(w["start"], w["kind"]) for w in doc["windows"]} == set(logged)
    assert all(w["realised_roc_auc"] == logged[(w["start"], w["kind"])] for w in doc["windows"])
    # each version and each check links the Airflow run that made it
    assert all(v["airflow_run"].startswith("dags/train/runs/") for v in doc["versions"]), doc["versions"]
    assert all(w["airflow_run"].startswith("dags/monitor/runs/") for w in doc["windows"]), doc["windows"]
    assert [q["partition"] for q in doc["quarantined"]] == [q["partition"] for q in quarantined_batches("flights")]
    # each quarantined partition's GX Data Docs page, through the view (the zones may be S3), behind the same login
    for q in doc["quarantined"]:
        docs = client.session.get(f"{client.base}/model-health/data-docs/{q['partition']}", timeout=30)
        assert docs.status_code == 200 and "Unsuccessful Expectations" in docs.text, docs.text[:300]
        assert requests.get(f"{client.base}/model-health/data-docs/{q['partition']}", timeout=10).status_code in (401, 403)
    assert client.session.get(f"{client.base}/model-health/data-docs/dt=1999-01-01T0000Z", timeout=30).status_code == 404

    card = requests.get(next(v for v in doc["versions"] if v["version"] == live.version)["card"], timeout=10)
    assert card.status_code == 200 and card.text.startswith(
        f"# {settings.model_name} v{live.version}"
    )  # the view links each card
    page = client.session.get(f"{client.base}/model-health/", timeout=30)
    assert page.status_code == 200 and f"Serving <b>v{live.version}</b>" in page.text
    # the chart once a window has a ROC AUC (estimated or realised), the heat map once one has drift, else saying so
    scored = any(w["estimated_roc_auc"] is not None or w["realised_roc_auc"] is not None for w in doc["windows"])
    assert ("<svg id='auc'" in page.text) == scored and ("No window monitored yet." in page.text) == (not scored)
    drifted = any(w["psi"] for w in doc["windows"])
    assert ("<table id='drift'>" in page.text) == drifted and ("No drift measured yet." in page.text) == (not drifted)


def test_make_status_reports_every_service_healthy_and_what_serves_then_a_dead_one_down(loop):
    """`make status` (`include/local/stack.py health`) on the running loop: the scheduler's and the
    dag-processor's heartbeats, MLflow, serving, the live version, the last monitor decision."""
    from include.local.stack import health
    from include.model.registry import LIVE

    settings, client, _, stack = loop
    ports = Ports(airflow=urlparse(client.base).port, mlflow=urlparse(settings.mlflow_tracking_uri).port)
    lines, problems = health(settings, ports, stack.running())
    assert problems == [], problems
    text = "\n".join(lines)
    for part in (
        "metadatabase: healthy",
        "scheduler: healthy",
        "dag_processor: healthy",
        f"mlflow: {settings.mlflow_tracking_uri} answers",
    ):
        assert part in text, text
    live = alias_version(connect(settings.mlflow_tracking_uri), settings.model_name, LIVE)
    assert f"live: {settings.model_name} v{live.version} in slot" in text and "last monitor decision: " in text
    # a service that does not answer is reported down by name (here: nothing listens on the port given for MLflow)
    elsewhere = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    _, problems = health(elsewhere, ports, stack.running())
    assert any(p.startswith(f"MLflow at {elsewhere.mlflow_tracking_uri} does not answer") for p in problems), problems


CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_in_a_browser_sign_in_and_the_model_health_view_shows_what_mlflow_records(loop):
    """Debian's chromium driven by Playwright: sign in through Airflow's login page, open "Model
    health" from the navigation, and read the serving version and the chart inside the view against
    the registry and the monitoring runs; the screenshots are the README's."""
    sync_api = browser_api()
    from include.health.snapshot import snapshot
    from include.model.registry import LIVE

    settings, client, _, _ = loop
    live = alias_version(connect(settings.mlflow_tracking_uri), settings.model_name, LIVE)
    doc = snapshot(settings, get_usecase())
    ends = {line: {w["end"] for w in doc["windows"] if w[f"{line}_roc_auc"] is not None} for line in ("realised", "estimated")}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            sign_in(page, client)
            page.screenshot(path=SCREENSHOTS / "airflow-home.png")

            page.get_by_role("link", name="Model health").click()
            view = page.frame_locator("iframe")
            sync_api.expect(view.locator("#serving")).to_contain_text(f"Serving v{live.version} from slot", timeout=30_000)
            # one point per window end with that ROC AUC, estimated and realised, as the monitoring runs logged them
            assert ends["estimated"], "the traffic test's monitor check gave the view a window to chart"
            for line, window_ends in ends.items():
                points = view.locator(f"svg#auc polyline.{line}").get_attribute("points").split()
                assert len(points) == len(window_ends), (line, points, window_ends)
            sync_api.expect(view.locator("table").first).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "model-health.png", full_page=True)
            # links leave the UI's sandboxed iframe (no top navigation, no popups): MLflow in a new tab...
            with page.context.expect_page(timeout=30_000) as tab:
                view.get_by_role("link", name="run", exact=True).first.click()
            tab.value.wait_for_load_state("commit")
            assert tab.value.url.startswith(f"{settings.mlflow_tracking_uri}/#/experiments/"), tab.value.url
            tab.value.close()
            # ...and a quarantined partition's "revalidate" to the DAG's page, with its Trigger form
            assert doc["quarantined"], "the e2e plants a renamed column"
            view.get_by_role("link", name="revalidate").first.click()
            page.wait_for_url(f"{client.base}/dags/revalidate", timeout=30_000, wait_until="commit")
            sync_api.expect(page.get_by_role("button", name="Trigger").first).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert (SCREENSHOTS / "model-health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_a_browser_the_train_form_refuses_an_out_of_bound_value_naming_the_bound_then_a_valid_run_starts(loop):
    """The `train` form in Airflow's own trigger dialog: max_depth 100 is submitted as typed (not
    clamped to 16) and refused with the bound in the dialog, and no run is made; with 6 and a
    reason, the run starts and its first task runs. The refusal's screenshot is the docs'."""
    sync_api = browser_api()
    expect = sync_api.expect

    _, client, _, _ = loop
    before = {r["dag_run_id"] for r in client.runs("train")}
    reason = f"browser: a valid run {secrets.token_hex(4)}"
    with sync_api.sync_playwright() as p:
        browser = chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            sign_in(page, client)
            page.goto(f"{client.base}/dags/train")
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            trigger = dialog.get_by_role("button", name="Trigger")
            # the form's defaults are a valid run: Trigger is enabled with the optional reason empty
            expect(dialog.locator("input[name=element_reason]")).to_have_value("")
            expect(trigger).to_be_enabled()
            expect(dialog.get_by_text("At least 1, at most 16.")).to_be_visible()  # the bound, stated before typing

            max_depth = dialog.locator("input[name=element_max_depth]")
            max_depth.fill("100")
            max_depth.blur()
            expect(max_depth).to_have_value("100")  # not clamped to 16
            trigger.click()
            refusal = dialog.get_by_text("Invalid input for param max_depth: 100 is greater than the maximum of 16")
            expect(refusal).to_be_visible(timeout=30_000)
            refusal.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "train-form-refused.png")
            assert {r["dag_run_id"] for r in client.runs("train")} == before

            page.mouse.move(0, 0)  # the error toast covers Trigger and stays while the pointer is on it
            expect(page.locator("[data-scope=toast][data-type=error]")).to_have_count(0, timeout=30_000)
            max_depth.fill("6")
            dialog.locator("input[name=element_reason]").fill(reason)
            trigger.click()
            page.wait_for_url("**/dags/train/runs/**", timeout=30_000)  # the UI opens the new run
            run_id = unquote(page.url.rstrip("/").rsplit("/", 1)[-1])
            expect(page.get_by_text(run_id).first).to_be_visible()
        finally:
            browser.close()
    (created,) = [r for r in client.runs("train") if r["dag_run_id"] not in before]
    assert created["dag_run_id"] == run_id and created["conf"]["reason"] == reason and created["conf"]["max_depth"] == 6
    assert wait_until_idle(client, count_intervals(get_calendar()), timeout=300, poll=2)
    admit = client.get(f"dags/train/dagRuns/{run_id}/taskInstances/admit")
    assert admit["state"] == "success" and client.get(f"dags/train/dagRuns/{run_id}")["state"] == "success"


def browser_api():
    """Playwright's sync API, to drive Debian's chromium; a machine without it skips, saying how to get it."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no {CHROMIUM}: `apt-get install chromium` (as root) for the browser tests; .ci/run installs it where it can"
        )
    return pytest.importorskip("playwright.sync_api")


def chromium(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=["--no-sandbox"]
    )  # root in CI: no user namespace sandbox


def sign_in(page, client) -> None:
    """Through Airflow's login page, as a person would."""
    page.goto(f"{client.base}/")
    page.wait_for_url("**/auth/login**", timeout=30_000)  # signed out: the UI sends the browser to the login page
    page.fill("input[name=username]", client.user)
    page.fill("input[name=password]", client.password())
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{client.base}/", timeout=30_000)
