"""A small client of Airflow's REST API (v2): a token from the simple auth manager, then the few
calls the demo, `make rerun` and the end-to-end tests need."""

from __future__ import annotations

import json
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

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        r = self.session.request(method, f"{self.base}/api/v2/{path}", timeout=20, **kwargs)
        if r.status_code == 401:  # token expired
            self.login()
            r = self.session.request(method, f"{self.base}/api/v2/{path}", timeout=20, **kwargs)
        return r

    def get(self, path: str, **params) -> dict:
        r = self.request("GET", path, params=params)
        r.raise_for_status()
        return r.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", limit=500, order_by="run_after")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict) -> requests.Response:
        return self.request("POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
