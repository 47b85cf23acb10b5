"""The model-health page as a pure rendering of a snapshot document."""

from __future__ import annotations

import re

from include.health.page import chart, heat_map, render


def window(end: str, est, real, psi, kind="labelled", **extra):
    return {"start": "", "end": end, "kind": kind, "version": "2", "estimated_roc_auc": est, "realised_roc_auc": real,
            "cbpe_bias": None, "drift_share": 0.1, "psi": psi, "action": "none", "cause": "", "reason": ""} | extra  # fmt: skip


DOC = {
    "usecase": "flights",
    "model_name": "flights-delay",
    "serving": {
        "version": "4",
        "slot": "green",
        "deployed_at": "2026-12-07T18:33:00+00:00",
        "champion": "4",
        "weights": {"green": 100},
    },
    "versions": [
        {
            "version": "4",
            "aliases": ["champion", "live"],
            "data_window": "2013-01-01 … 2013-02-19",
            "reason": "monitor",
            "refit_of": "3",
            "refit_version": None,
            "decision": "promote",
            "gate_reason": "refit of v3 <b>",
            "interval": None,
            "champion_version": "2",
            "deployment": {"deployed_at": "2026-12-07T18:33:00+00:00", "slot": "green"},
            "mlflow": "http://mlflow/#/experiments/1/runs/abc",
            "card": "http://mlflow/get-artifact?path=model_card.md&run_uuid=abc",
        },
        {
            "version": "3",
            "aliases": ["challenger"],
            "data_window": "2013-01-01 … 2013-02-19",
            "reason": "monitor",
            "refit_of": None,
            "refit_version": "4",
            "decision": "promote",
            "gate_reason": "ROC AUC 0.59 vs 0.58",
            "interval": [-0.003, 0.021],
            "champion_version": "2",
            "deployment": {},
            "mlflow": None,
        },
    ],  # fmt: skip
    "timeline": [{"at": "2026-12-07T18:33:00+00:00", "event": "100% traffic (slot green)", "version": "4"}],
    "windows": [
        window("2013-02-12T05:00:00+00:00", 0.63, 0.56, {"temp": 0.4, "dewp": 2.5}),
        window("2013-02-12T05:00:00+00:00", 0.64, None, {"temp": 0.3}, kind="served"),
        window("2013-02-19T05:00:00+00:00", 0.60, 0.61, {"temp": 0.1, "dewp": 0.2}),
        window("2013-02-26T05:00:00+00:00", 0.59, None, {"temp": 0.05}, kind="served"),
    ],
    "quarantined": [
        {
            "partition": "dt=2013-01-29T0500Z",
            "interval_start": "2013-01-29",
            "interval_end": "2013-02-05",
            "landing_uri": "file:///x",
            "failures": ["row count 2428 < 3850"],
        }
    ],  # fmt: skip
    "alerts": [{"time": "2026-12-07T18:31:00+00:00", "kind": "decay", "message": "flights-delay v2 <script>alert(1)</script>"}],
}


def test_the_page_says_what_serves_and_lists_versions_timeline_quarantine_and_alerts():
    html = render(DOC, {"airflow": "http://airflow:8080"})
    assert "Serving <b>v4</b> from slot green (weights: green 100%); champion v4; 100% since 2026-12-07T18:33:00+00:00" in html
    assert "v4 (refit of v3)" in html and "-0.003…+0.021" in html and "100% traffic (slot green)" in html
    assert (
        "row count 2428 &lt; 3850" in html
        and "href='http://airflow:8080/dags/revalidate' target='_top' data-out='ui'>revalidate</a>" in html
    )
    assert "GX Data Docs" not in html  # a quarantine record from before Data Docs were kept links none
    documented = DOC | {"quarantined": [DOC["quarantined"][0] | {"data_docs_uri": "file:///zones/quarantine/x/data_docs.html"}]}
    assert "<a href='data-docs/dt=2013-01-29T0500Z'>GX Data Docs</a>" in render(documented)  # in the view's own frame
    # whatever a reason or an alert holds is text, never markup
    assert (
        html.count("<script>") == 1 and "&lt;script&gt;" in html
    )  # the one script is the page's own and "refit of v3 &lt;b&gt;" in html
    assert "<a href='http://mlflow/#/experiments/1/runs/abc' target='_blank' rel='noopener' data-out='tab'>run</a>" in html
    assert (
        "<a href='http://mlflow/get-artifact?path=model_card.md&amp;run_uuid=abc' target='_blank' rel='noopener' data-out='tab'>model card</a>"
        in html
    )
    # a repair of the serving guard without a version (Traefik restarted) has no version cell
    healed = DOC | {"timeline": [{"at": "2026-12-07T18:40:00+00:00", "event": "self-heal: Traefik was down", "version": ""}]}
    assert "<td>2026-12-07T18:40:00+00:00</td><td></td><td>self-heal: Traefik was down</td>" in render(healed)


def test_before_anything_serves_the_page_says_so():
    nothing = DOC | {"serving": {"version": None, "slot": None, "deployed_at": None, "champion": None, "weights": {}}}
    assert "<p id='serving'>Nothing serves yet: no model has passed the gate</p>" in render(nothing)
    promoted = nothing | {"serving": nothing["serving"] | {"champion": "2"}}
    assert "<p id='serving'>Nothing serves yet; champion v2</p>" in render(promoted)


def test_the_chart_draws_realised_and_estimated_per_window_end():
    svg = chart(DOC["windows"])
    realised = re.search(r"class='realised'[^>]*points='([^']*)'", svg).group(1).split()
    estimated = re.search(r"class='estimated'[^>]*points='([^']*)'", svg).group(1).split()
    assert len(realised) == 2 and len(estimated) == 3  # three window ends; labels landed on two
    # a dot on each point, so a single window shows too
    dots = re.findall(r"<circle class='realised' cx='([^']*)' cy='([^']*)'", svg)
    assert [f"{x},{y}" for x, y in dots] == realised
    assert len(re.findall(r"<circle class='realised'", chart(DOC["windows"][:1]))) == 1
    assert "3 windows, 2013-02-12 … 2013-02-26" in svg
    assert chart([]) == "<p>No window monitored yet.</p>"


def test_the_heat_map_has_a_row_per_feature_most_drifted_first_and_prefers_the_labelled_check():
    table = heat_map(DOC["windows"])
    rows = re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", table)
    assert [name for name, _ in rows] == ["dewp", "temp"]
    temp = re.findall(r">([0-9.]*)</td>", rows[1][1])
    assert temp == ["0.40", "0.10", "0.05"]  # 02-12: the labelled check's 0.4, not the served 0.3
    assert "rgba(214,39,40,1.00)" in rows[0][1]  # PSI 2.5: full shade


def test_the_newest_checks_show_both_roc_aucs_the_drift_share_the_decision_and_their_runs():
    checked = window(
        "2013-02-26T05:00:00+00:00",
        0.61,
        0.58,
        {"temp": 0.2},
        start="2013-02-19T05:00:00+00:00",
        drift_share=0.25,
        action="retrain",
        cause="decay",
        mlflow="http://mlflow/#/experiments/7/runs/r1",
        airflow_run="dags/monitor/runs/scheduled__2013-02-26",
    )
    html = render(DOC | {"windows": [checked]}, {"airflow": "http://airflow:8080"})
    assert (
        "<td>2013-02-19 … 2013-02-26</td><td>labelled</td><td>v2</td><td>0.610</td><td>0.580</td><td>25%</td>"
        "<td>retrain (decay)</td>" in html
    )
    assert "<a href='http://mlflow/#/experiments/7/runs/r1' target='_blank' rel='noopener' data-out='tab'>MLflow run</a>" in html
    assert (
        "<a href='http://airflow:8080/dags/monitor/runs/scheduled__2013-02-26' target='_top' data-out='ui'>Airflow run</a>"
        in html
    )
    # without the UI's public base URL the link is from the server's root, where the view is served
    assert "<a href='/dags/monitor/runs/scheduled__2013-02-26' target='_top' data-out='ui'>Airflow run</a>" in render(
        DOC | {"windows": [checked]}
    )
    # only the newest checks are listed, newest first
    many = [window(f"2013-{m:02d}-01T05:00:00+00:00", 0.6, None, {}, start=f"2013-{m:02d}-01") for m in range(1, 13)]
    many += [window("2014-01-01T05:00:00+00:00", 0.6, None, {}, start="2013-12-25")]
    html = render(DOC | {"windows": many})
    assert "2013-12-25 … 2014-01-01" in html and "2013-01-01 … 2013-01-01" not in html
    assert html.index("2013-12-25 … 2014-01-01") < html.index("2013-12-01 … 2013-12-01")
