"""The model-health page: `snapshot`'s document as one HTML page (no external asset), so it renders
inside the Airflow UI's iframe and behind any proxy: the serving version, the served ROC AUC over
windows (estimated and realised) as an SVG chart, per-feature drift as a heat map, the versions with
their gate decisions, the deployment timeline, quarantined partitions and recent alerts.

Airflow 3.3 frames an external view with `sandbox="allow-scripts allow-same-origin allow-forms
allow-downloads"`: no top-level navigation and no popups, so a plain link out of the frame does
nothing. The page's one script (`LEAVE_FRAME`) takes such a click to the parent page, which is on
the same origin: an Airflow UI page through the UI's own router (history.pushState and a popstate
event), anything else (MLflow) in a new tab opened by the parent. Opened on its own, the page's
links work as they are."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 720, 200, 30


def render(doc: dict, links: dict[str, str] | None = None) -> str:
    """The page of `doc` (`snapshot`); `links`: base URLs of the Airflow UI ("airflow") and MLflow."""
    links = links or {}
    s = doc["serving"]
    weights = ", ".join(f"{slot} {w}%" for slot, w in sorted(s["weights"].items())) or "no traffic routed"
    if s["version"] is None:
        serving = "Nothing serves yet" + (
            f"; champion v{escape(str(s['champion']))}" if s["champion"] else ": no model has passed the gate"
        )
    else:
        serving = (
            f"Serving <b>v{escape(str(s['version']))}</b> from slot {escape(str(s['slot']))} (weights: {escape(weights)}); "
            f"champion v{escape(str(s['champion']))}"
            + (f"; 100% since {escape(s['deployed_at'])}" if s.get("deployed_at") else "")
        )
    parts = [
        f"<h1>Model health: {escape(doc['model_name'])}</h1>",
        f"<p id='serving'>{serving}</p>",
        "<h2>Served ROC AUC per window</h2>",
        chart(doc["windows"]),
        windows_table(doc["windows"], links),
        "<h2>Drift per feature (PSI over the window's noise threshold)</h2>",
        heat_map(doc["windows"]),
        "<h2>Versions and gate decisions</h2>",
        table(
            ["version", "data window", "gate", "Δ 95% CI", "reason", "deployment", "MLflow"],
            [
                [
                    f"v{v['version']}" + (f" (refit of v{v['refit_of']})" if v["refit_of"] else ""),
                    v["data_window"] or "",
                    v["decision"],
                    "" if v["interval"] is None else f"{v['interval'][0]:+.3f}…{v['interval'][1]:+.3f}",
                    v["gate_reason"] or "",
                    "; ".join(f"{k} {val}" for k, val in v["deployment"].items()),
                    " ".join(
                        x
                        for x in (
                            _link(v["mlflow"], "run"),
                            _link(v.get("card"), "model card"),
                            _link(_airflow(links, v.get("airflow_run")), "Airflow run", "ui"),
                        )
                        if x
                    ),
                ]
                for v in doc["versions"]
            ],
            raw={6},
        ),
        "<h2>Deployment timeline</h2>",
        table(
            ["at", "version", "event"],
            [[e["at"], f"v{e['version']}" if e["version"] else "", e["event"]] for e in doc["timeline"]],
        ),
        "<h2>Quarantined partitions</h2>",
        table(
            ["partition", "interval", "why", "evidence and re-validation"],
            [
                [
                    q["partition"],
                    f"{q['interval_start']} … {q['interval_end']}",
                    "; ".join(q.get("failures") or [])[:400],
                    " ".join(
                        x
                        for x in (
                            _link(f"data-docs/{q['partition']}" if q.get("data_docs_uri") else None, "GX Data Docs", "here"),
                            _link(_airflow(links, "dags/revalidate"), "revalidate", "ui"),  # the DAG's page: its Trigger form
                        )
                        if x
                    ),
                ]
                for q in doc["quarantined"]
            ],
            raw={3},
        ),
        "<h2>Recent alerts</h2>",
        table(["time", "kind", "message"], [[a["time"], a["kind"], a["message"][:300]] for a in doc["alerts"]]),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}th{background:#f4f4f4}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Model health</title><style>{style}</style></head>"
        f"<body>{''.join(parts)}<script>{LEAVE_FRAME}</script></body></html>"
    )


LEAVE_FRAME = (
    "document.addEventListener('click',function(e){"
    "var a=e.target.closest('a[data-out]');var top=window.top;"
    "if(!a||top===window)return;e.preventDefault();"
    "if(a.dataset.out==='ui'){top.history.pushState(null,'',a.href);top.dispatchEvent(new PopStateEvent('popstate'));return;}"
    "var o=top.document.createElement('a');o.href=a.href;o.target='_blank';o.rel='noopener';"
    "top.document.body.appendChild(o);o.click();o.remove();});"
)
"""Links out of the Airflow UI's sandboxed iframe (see the module docstring): `data-out="ui"`
through the UI's router, `data-out="tab"` in a new tab."""


RECENT_WINDOWS = 12


def windows_table(windows: list[dict], links: dict[str, str]) -> str:
    """The newest checks, one row per window and kind: the version, the ROC AUC estimated and
    realised, the drift share, the decision, links to its MLflow and Airflow runs."""
    if not windows:
        return ""

    def number(value) -> str:
        return "" if value is None else f"{value:.3f}"

    rows = [
        [
            f"{w['start'][:10]} … {w['end'][:10]}",
            w["kind"],
            f"v{w['version']}" if w.get("version") else "",
            number(w["estimated_roc_auc"]),
            number(w["realised_roc_auc"]),
            "" if w["drift_share"] is None else f"{w['drift_share']:.0%}",
            f"{w['action']}" + (f" ({w['cause']})" if w.get("cause") else ""),
            " ".join(
                x
                for x in (_link(w.get("mlflow"), "MLflow run"), _link(_airflow(links, w.get("airflow_run")), "Airflow run", "ui"))
                if x
            ),
        ]
        for w in windows[::-1][:RECENT_WINDOWS]
    ]
    header = ["window", "check", "model", "estimated ROC AUC", "realised ROC AUC", "drift share", "decision", "runs"]
    return f"<h3>Newest checks</h3>{table(header, rows, raw={7})}"


def chart(windows: list[dict]) -> str:
    """Estimated (dashed) and realised (solid) ROC AUC per window, as an SVG line chart."""
    points = [w for w in windows if w["estimated_roc_auc"] is not None or w["realised_roc_auc"] is not None]
    if not points:
        return "<p>No window monitored yet.</p>"
    ends = sorted({w["end"] for w in points})
    values = [v for w in points for v in (w["estimated_roc_auc"], w["realised_roc_auc"]) if v is not None]
    low, high = min(values + [0.5]) - 0.02, max(values) + 0.02

    def xy(end: str, value: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (ends.index(end) / max(len(ends) - 1, 1))
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - low) / (high - low)
        return f"{x:.1f},{y:.1f}"

    def line(key: str, dash: str, colour: str, cls: str) -> str:
        best = {w["end"]: w[key] for w in points if w[key] is not None}
        pts = [xy(e, best[e]) for e in ends if e in best]
        dots = "".join(
            f"<circle class='{cls}' cx='{p.split(',')[0]}' cy='{p.split(',')[1]}' r='3' fill='{colour}'/>" for p in pts
        )
        return (
            f"<polyline class='{cls}' fill='none' stroke='{colour}' stroke-width='2' stroke-dasharray='{dash}' "
            f"points='{' '.join(pts)}'/>{dots}"
        )  # a dot per window: a single window is visible too

    axis = f"<text x='2' y='{PAD}' font-size='11'>{high:.2f}</text><text x='2' y='{HEIGHT - PAD}' font-size='11'>{low:.2f}</text>"
    legend = f"<text x='{WIDTH - 230}' y='14' font-size='11'>— realised  - - estimated (CBPE)</text>"
    return (
        f"<svg id='auc' width='{WIDTH}' height='{HEIGHT}' role='img' aria-label='served ROC AUC per window'>"
        f"{axis}{legend}{line('realised_roc_auc', '', '#1f77b4', 'realised')}{line('estimated_roc_auc', '4 3', '#ff7f0e', 'estimated')}</svg>"
        f"<p>{len(ends)} windows, {escape(ends[0][:10])} … {escape(ends[-1][:10])}</p>"
    )


def heat_map(windows: list[dict], top: int = 12) -> str:
    """The `top` features by their largest PSI, one row each, one column per window (labelled checks
    when a window has one), shaded by PSI."""
    by_end: dict[str, dict] = {}
    for w in windows:
        if w["psi"] and (w["end"] not in by_end or w["kind"] == "labelled"):
            by_end[w["end"]] = w
    if not by_end:
        return "<p>No drift measured yet.</p>"
    ends = sorted(by_end)
    features = sorted(
        {f for w in by_end.values() for f in w["psi"]}, key=lambda f: -max(by_end[e]["psi"].get(f, 0) for e in ends)
    )[:top]
    head = "<tr><th>feature</th>" + "".join(f"<th>{escape(e[5:10])}</th>" for e in ends) + "</tr>"
    rows = []
    for f in features:
        cells = []
        for e in ends:
            psi = by_end[e]["psi"].get(f)
            shade = 0 if psi is None else min(psi / 1.0, 1.0)
            cells.append(f"<td style='background:rgba(214,39,40,{shade:.2f})'>{'' if psi is None else f'{psi:.2f}'}</td>")
        rows.append(f"<tr><td>{escape(f)}</td>{''.join(cells)}</tr>")
    return f"<table id='drift'>{head}{''.join(rows)}</table>"


def table(header: list[str], rows: list[list], raw: set[int] = frozenset()) -> str:
    if not rows:
        return "<p>None.</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if i in raw else escape(str(cell))}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _airflow(links: dict[str, str], path: str | None) -> str | None:
    """A page of the Airflow UI: under its public base URL when known, else from the server's root
    (the view is served by the same API server)."""
    return f"{links.get('airflow', '')}/{path}" if path else None


def _link(url: str | None, text: str, out: str = "tab") -> str:
    """A link: `tab`, another site (MLflow) in a new tab; `ui`, a page of the Airflow UI in its
    window; `here`, a page of this app in the view's own frame (relative to it)."""
    if not url:
        return ""
    kind = {"tab": " target='_blank' rel='noopener' data-out='tab'", "ui": " target='_top' data-out='ui'", "here": ""}[out]
    return f"<a href='{escape(url)}'{kind}>{escape(text)}</a>"
