"""`make rerun DAG=train REASON="alert 1234: drift"`: trigger a DAG run through Airflow's REST API.

The plain REST way, as an alert receiver would do it: a JWT from `/auth/token`, then
`POST /api/v2/dags/{dag_id}/dagRuns` with a conf. The DAG's params form validates the conf: an
invalid value is refused (HTTP 400) before any run exists.

Credentials: AIRFLOW_USER / AIRFLOW_PASSWORD if set, else the embedded runtime's admin and its
generated password file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from include.local.airflow_api import AirflowAPI
    from include.local.stack import Ports
    from include.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("--reason", default="", help="recorded on the run (the train DAG tags it on the MLflow run)")
    parser.add_argument("--conf", default="{}", help="more form values as JSON, e.g. '{\"n_estimators\": 200}'")
    parser.add_argument("--url", default=f"http://127.0.0.1:{Ports().airflow}")
    args = parser.parse_args(argv)
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        print(f"--conf is not JSON: {exc}", file=sys.stderr)
        return 2
    if args.reason:
        conf["reason"] = args.reason
    api = AirflowAPI(
        args.url, get_settings().state_dir / "airflow", os.environ.get("AIRFLOW_USER"), os.environ.get("AIRFLOW_PASSWORD")
    )
    api.login()
    r = api.trigger(args.dag_id, conf)
    if r.status_code != 200:
        print(f"Airflow refused the run of {args.dag_id} (HTTP {r.status_code}): {r.text[:500]}", file=sys.stderr)
        return 1
    run = r.json()
    print(
        f"triggered {args.dag_id} run {run['dag_run_id']} ({run['state']}): {args.url}/dags/{args.dag_id}/runs/{run['dag_run_id']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
