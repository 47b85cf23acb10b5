"""Everything of the loop that knows Airflow: the Assets, the task defaults, the failure notifier,
the provider notifiers alerts go out through, and the mapping of the project's exceptions to
Airflow outcomes. The rest of `include/` never imports Airflow (import-linter checks it).

Assets connect the DAGs and are declared once; producers and consumers import these objects:

    validated data ──► train ──► champion model ──► deploy ──► deployment (serving)
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta

from airflow.sdk import Asset
from airflow.sdk.bases.notifier import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.alerting.alerts import add_sink, send_alert
from include.outcomes import FailNow, Skip
from include.settings import get_settings

log = logging.getLogger(__name__)

_usecase = get_settings().usecase

VALIDATED_DATA = Asset(name=f"{_usecase}.validated_data", uri=f"loop://{_usecase}/validated", group="data")
"""A partition passed the gate; event extra: partition id, interval, validated URI and hash."""

CHAMPION_MODEL = Asset(name=f"{_usecase}.champion_model", uri=f"loop://{_usecase}/champion", group="model")
"""The `champion` alias moved; event extra: model name, version, MLflow run id."""

DEPLOYMENT = Asset(name=f"{_usecase}.deployment", uri=f"loop://{_usecase}/serving", group="serving")
"""A model version took 100% of traffic on the serving entry; event extra: version, bento tag, slot."""


@contextlib.contextmanager
def airflow_outcome():
    """Inside a task: `FailNow` fails it without retries (retrying cannot make a bad batch or a bad
    model good), `Skip` skips it; any other error keeps the task's retries."""
    try:
        yield
    except FailNow as exc:
        raise AirflowFailException(str(exc)) from exc
    except Skip as exc:
        raise AirflowSkipException(str(exc)) from exc


class AlertNotifier(BaseNotifier):
    """Every task's `on_failure_callback`: once a task has used up its retries, its error and a
    link to it become a `task_failed` alert."""

    def __init__(self, kind: str = "task_failed"):
        super().__init__()
        self.kind = kind

    def notify(self, context) -> None:
        ti = context["ti"]
        error = context.get("exception")
        if getattr(error, "alerted", False) or getattr(getattr(error, "__cause__", None), "alerted", False):
            return  # the task sent its own, more specific alert before failing
        message = f"{ti.dag_id}.{ti.task_id} failed in run {ti.run_id}" + (f": {error}" if error else "")
        details = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "try_number": ti.try_number}
        send_alert(get_settings(), self.kind, message[:2000], details, links={"airflow": ti.log_url})


def task_defaults(retry_delay: timedelta, **extra) -> dict:
    """`default_args` of every DAG of the loop: the owner, two retries, the failure notifier."""
    return {"owner": "ml-platform", "on_failure_callback": [AlertNotifier()], "retries": 2, "retry_delay": retry_delay, **extra}


def sink_notifiers(settings, alert: dict) -> list[BaseNotifier]:
    """The provider notifiers the settings name, each carrying this alert. No endpoint or
    credential lives in code: each is an Airflow connection named in the settings."""
    notifiers: list[BaseNotifier] = []
    links = alert["links"]
    text = f"[loop] {alert['kind']}: {alert['message']}"
    if settings.alert_http_conn_id:
        from airflow.providers.http.notifications.http import HttpNotifier

        notifiers.append(
            HttpNotifier(
                http_conn_id=settings.alert_http_conn_id,
                endpoint=settings.alert_http_endpoint,
                json=alert,
                headers={"Content-Type": "application/json"},
            )
        )
    if settings.alert_slack_conn_id:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        lines = [text] + [f"<{url}|{name}>" for name, url in links.items()]
        notifiers.append(SlackWebhookNotifier(slack_webhook_conn_id=settings.alert_slack_conn_id, text="\n".join(lines)))
    if settings.alert_email:
        from html import escape

        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        body = f"<p>{escape(alert['message'])}</p>" + "".join(
            f'<p><a href="{escape(url)}">{escape(name)}</a></p>' for name, url in links.items()
        )
        notifiers.append(
            SmtpNotifier(to=settings.alert_email, smtp_conn_id=settings.alert_smtp_conn_id, subject=text[:200], html_content=body)
        )
    return notifiers


def notify_sinks(settings, alert: dict) -> None:
    """Send the alert through every configured notifier; a failing sink is logged, not raised
    (the alert is already in the local sink, and alerting must not fail the task)."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except Exception:
        context = {}
    for notifier in sink_notifiers(settings, alert):
        try:
            notifier.notify(context)
        except Exception as exc:
            log.error("alert sink %s failed: %s", type(notifier).__name__, exc)


def _notify_inside_a_task(settings, alert: dict) -> None:
    if os.environ.get("AIRFLOW_CTX_DAG_ID"):
        notify_sinks(settings, alert)


# An alert raised inside a task process (which has imported its DAG file, and so this module)
# also goes out through the provider notifiers.
add_sink("airflow-notifiers", _notify_inside_a_task)


NUMBER_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def form_params(model, defaults: dict | None = None) -> dict:
    """A DAG's `params` form generated from a pydantic model: the same bounds, titles and
    descriptions the model enforces (`defaults` overrides the model's defaults, e.g. from settings).

    A number's bounds go under `allOf`, and its description states them: Airflow's UI sets a
    top-level `minimum`/`maximum` on its number input, which clamps 100 to 16 without a word. Under
    `allOf` the schema refuses the same values, so the form submits what was typed and shows the
    API's refusal with the bound ("100 is greater than the maximum of 16")."""
    from airflow.sdk import Param

    params = {}
    for name, prop in model.model_json_schema()["properties"].items():
        prop = dict(prop)
        default = prop.pop("default", None)
        if "anyOf" in prop:  # `X | None`: Airflow's form wants a list of types
            variants = prop.pop("anyOf")
            prop = {k: v for v in variants for k, v in v.items() if k != "type"} | prop
            prop["type"] = [v["type"] for v in variants]
        bounds = {key: prop.pop(key) for key in NUMBER_BOUNDS if key in prop}
        if bounds:
            prop["allOf"] = [bounds]
            prop["description"] = f"{prop.get('description', '')} {describe_bounds(bounds)}".strip()
        params[name] = Param((defaults or {}).get(name, default), **prop)
    return params


def optional_reason(description: str):
    """A form's free-text "Reason (optional)" field: empty by default (the UI's Trigger stays
    enabled), at most 500 characters, no control characters."""
    from airflow.sdk import Param

    from include.model.params import PLAIN_TEXT

    return Param(
        None, type=["null", "string"], maxLength=500, pattern=PLAIN_TEXT, title="Reason (optional)", description=description
    )


def describe_bounds(bounds: dict) -> str:
    """`{"exclusiveMinimum": 0, "maximum": 1}` → "Above 0, at most 1." (what a form field admits)."""
    words = {"minimum": "at least", "exclusiveMinimum": "above", "maximum": "at most", "exclusiveMaximum": "below"}
    text = ", ".join(f"{words[key]} {bounds[key]:g}" for key in NUMBER_BOUNDS if key in bounds)
    return f"{text[0].upper()}{text[1:]}."


def rollout_claim(dag_run) -> dict:
    """What a rollout's plan task passes to `plan_rollout` to take the serving lease: its owner
    (this DAG run) and how to tell whether another holder's run has ended (asked of Airflow)."""
    return {"owner": f"{dag_run.dag_id}/{dag_run.run_id}", "holder_ended": dag_run_ended}


def claim_serving_slots():
    """The first task of a rollout (deploy, rollback): a sensor that takes the serving host's
    rollout lease for this DAG run. While another rollout holds it, it pokes every 10 s in
    reschedule mode, so the waiting run holds no worker slot (the `serving` worker may have one)."""
    from airflow.sdk import task

    settings = get_settings()

    @task.sensor(poke_interval=10, timeout=settings.rollout_lock_wait_seconds, mode="reschedule")
    def claim_slots(dag_run=None) -> bool:
        from include.rollout.lease import claim

        return claim(get_settings(), **rollout_claim(dag_run)) is not None

    return claim_slots()


def dag_run_ended(owner: str) -> bool:
    """Whether the DAG run `<dag_id>/<run_id>` has finished (success or failed); False when
    Airflow cannot tell (not a DAG run, or not reachable)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    dag_id, _, run_id = owner.partition("/")
    try:
        return RuntimeTaskInstance.get_dagrun_state(dag_id, run_id) in ("success", "failed")
    except Exception as exc:
        log.info("cannot tell whether %s has ended: %s", owner, exc)
        return False


class ReleaseRolloutLease(BaseNotifier):
    """`on_failure_callback` of the rollout tasks: a run whose step failed for good gives the
    serving lease back at once, so the next deploy or rollback does not wait for it to expire."""

    def notify(self, context) -> None:
        from include.rollout.lease import release

        run = context["dag_run"]
        if release(get_settings(), f"{run.dag_id}/{run.run_id}"):
            log.info("released the serving lease of %s/%s", run.dag_id, run.run_id)


def rollout_steps(ref):
    """The tasks of "put a version into traffic", shared by `deploy` (promote mode) and `rollback`
    (restore mode): build_bento → start_candidate → infra_validate → canary → finalize. `ref` is
    the plan task's output; returns the finalize task's output (the live deployment)."""
    from airflow.sdk import task

    on_failure = [AlertNotifier(), ReleaseRolloutLease()]

    @task(on_failure_callback=on_failure)
    def build_bento(ref: dict) -> dict:
        from include.model.packaging import build_bento

        with airflow_outcome():  # a model whose files are not the judged ones (ModelTampered): no retry
            return {**ref, **build_bento(get_settings(), ref["model_name"], ref["version"])}

    @task(on_failure_callback=on_failure)
    def start_candidate(ref: dict) -> dict:
        from include.rollout.rollout import start_candidate

        with airflow_outcome():
            start_candidate(get_settings(), ref["model_name"], ref["version"], ref["slot"], ref["bento_tag"], owner=ref["owner"])
        return ref

    @task(on_failure_callback=on_failure)
    def infra_validate(ref: dict) -> dict:
        from include.rollout.infra import infra_validate
        from include.rollout.lease import hold
        from include.usecases import get_usecase

        with airflow_outcome():
            hold(get_settings(), ref["owner"])
            return {**ref, "infra": infra_validate(get_settings(), get_usecase(), ref["slot"], ref["model_name"], ref["version"])}

    @task(execution_timeout=timedelta(minutes=30), on_failure_callback=on_failure)
    def canary(ref: dict) -> dict:
        """Promote: LOOP_CANARY_STEPS, each baked and watched. Restore: one step to 100%."""
        from include.rollout.rollout import shift_traffic

        with airflow_outcome():
            return {**ref, "canary": shift_traffic(get_settings(), ref)}

    @task(outlets=[DEPLOYMENT], on_failure_callback=on_failure)
    def finalize(ref: dict, dag_run=None, outlet_events=None) -> dict:
        from include.rollout.rollout import finalize

        live = finalize(get_settings(), ref, ref["bento_tag"], dag_run.run_id)
        outlet_events[DEPLOYMENT].extra = live
        return live

    return finalize(canary(infra_validate(start_candidate(build_bento(ref)))))
