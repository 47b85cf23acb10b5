"""No credential is written into the repository, and the scanner that says so finds planted ones.

The planted secrets are generated when the test runs: a literal one in this file would be the very
thing the repository scan must not find.
"""

from __future__ import annotations

import base64
import importlib
import secrets
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scan():
    return importlib.import_module("tests.tools.secret_scan")


def test_the_repository_holds_no_secret(scan):
    findings = scan.scan_repository()
    assert not findings, "credentials in tracked files (generate them with `make secrets` instead):\n" + "\n".join(
        map(str, findings)
    )
    names = {p.relative_to(ROOT).as_posix() for p in scan.repository_files()}
    assert {"docker-compose.yaml", ".env.example", "README.md", "include/credentials.py"} <= names
    assert ".env" not in names  # ignored: where `make secrets` writes


def _token() -> str:
    return secrets.token_urlsafe(24) + "7q"  # letters and a digit, whatever the draw


def _planted() -> dict[str, str]:
    key = "-----BEGIN " + "RSA PRIVATE KEY-----"
    return {
        "private key block": f"{key}\nMIIEow...\n",
        "AWS access key id": "aws_access_key_id = "
        + "AKIA"
        + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "URL with a password": f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN: postgresql://airflow:{_token()}@postgres:5432/airflow",
        "python keyword": f'connect(host="db", password="{_token()}")',
        "YAML mapping": f"    MLFLOW_TRACKING_PASSWORD: {_token()}",
        "env file": f"AIRFLOW__CORE__FERNET_KEY={base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}",
        "JSON": f'{{"conn_type": "http", "password": "{_token()}"}}',
        "shell export": f"export LOOP_WEBHOOK_TOKEN='{_token()}'",
        "JWT": "Authorization: Bearer eyJ" + _token() + ".eyJ" + _token() + "." + _token(),
    }


@pytest.mark.parametrize("kind", list(_planted()))
def test_a_planted_secret_is_found(scan, kind):
    findings = scan.scan_text(_planted()[kind], "planted.txt")
    assert findings, f"the scanner missed a {kind}"
    assert findings[0].path == "planted.txt" and findings[0].line >= 1


def test_a_generated_key_without_a_digit_is_found(scan):
    """About 1 in 1,700 Fernet keys has no digit; such a key is still a secret."""
    key = "AefZOoQwtbtXaSSGcWIFzPCuM" + "-GtpWJVHzPGVnhpwew="
    assert scan.scan_text(f"AIRFLOW__CORE__FERNET_KEY={key}")


@pytest.mark.parametrize(
    "line",
    [
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN: postgresql+psycopg2://airflow:${AIRFLOW_DB_PASSWORD:?run make secrets}@postgres:5432/airflow",
        "MLFLOW_TRACKING_PASSWORD: ${MLFLOW_LOOP_PASSWORD:?run make secrets to create .env}",
        "LOOP_WEBHOOK_TOKEN=",
        "token = secrets.token_urlsafe(32)",
        'AIRFLOW_CONN_LOOP_ALERTS=\'{"conn_type": "http", "host": "alerts.example", "password": "..."}\'',
        'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/v2/dags',
        'key=f"{prefix}/{key}"',
        "sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64",
        "http_config: {authorization: {credentials_file: /etc/alertmanager/loop-token}}",
        "secret_name: thisIsAVeryLongVariableNameForSomethingElse",
        "LOOP_SECRET_KEY=AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD_SETTING",
    ],
)
def test_references_and_placeholders_are_not_secrets(scan, line):
    assert scan.scan_text(line) == []


def test_a_planted_file_fails_the_repository_scan(scan, tmp_path):
    """End to end over a git work tree: an untracked, unignored file counts (the next commit could
    add it); an ignored `.env` does not."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(".env\n")
    (tmp_path / ".env").write_text(f"AIRFLOW_ADMIN_PASSWORD={_token()}\n")
    assert scan.scan_repository(tmp_path) == []
    (tmp_path / "settings.yaml").write_text(f"database:\n  password: {_token()}\n")
    assert [str(f) for f in scan.scan_repository(tmp_path)] == ["settings.yaml:2: a secret-looking literal assigned to password"]
