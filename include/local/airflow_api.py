"""A small client of Airflow's REST API (v2): a token from the simple auth manager, then the few
calls the demo, `make rerun` and the end-to-end tests need."""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests

ADMIN_USER = "admin"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
"""The simple auth manager's `{user: password}` file in AIRFLOW_HOME (the embedded runtime writes it)."""


class AirflowAPI:
    """The few calls of Airflow's REST API (v2) the demo needs, with a token from the simple auth manager."""

    def __init__(self, base: str, home: Path, user: str | None = None, password: str | None = None):
        self.base = base.rstrip("/")
        self.home = home
        self.user = user or ADMIN_USER
        self._password = password
        self.session = requests.Session()

    def password(self) -> str:
        if self._password:
            return self._password
        return json.loads((self.home / PASSWORDS_FILE).read_text())[self.user]

    def login(self) -> None:
        r = self.session.post(f"{self.base}/auth/token", json={"username": self.user, "password": self.password()}, timeout=10)
        r.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def request(self, method: str, path: str, retries: int = 3, safe: bool | None = None, **kwargs) -> requests.Response:
        """One call; an expired token is renewed. A server error is retried (`retries` times, 1, 2, 4 s
        apart) when the call is `safe` to repeat (default: every method but POST): the embedded
        runtime's SQLite answers 500 when a write waits for its lock longer than 5 s, and nothing
        was written."""
        safe = method != "POST" if safe is None else safe
        url = f"{self.base}/api/v2/{path}"
        for attempt in range(retries + 1):
            r = self.session.request(method, url, timeout=20, **kwargs)
            if r.status_code == 401:  # token expired
                self.login()
                r = self.session.request(method, url, timeout=20, **kwargs)
            if r.status_code < 500 or not safe or attempt == retries:
                return r
            time.sleep(2**attempt)
        return r

    def get(self, path: str, **params) -> dict:
        r = self.request("GET", path, params=params)
        r.raise_for_status()
        return r.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", limit=500, order_by="run_after")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict, run_id: str | None = None) -> requests.Response:
        """A new run of `dag_id`. With `run_id` the call is idempotent, so a server error is retried:
        a run that exists already answers 409."""
        body = {"logical_date": None, "conf": conf} | ({"dag_run_id": run_id} if run_id else {})
        return self.request("POST", f"dags/{dag_id}/dagRuns", safe=run_id is not None, json=body)
