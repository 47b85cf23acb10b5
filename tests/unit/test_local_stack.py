"""The embedded runtime's Airflow configuration (include/local/stack.py): loopback only, the admin's
password written private before Airflow starts, the scheduler without its any-interface log server.
No server is started: Airflow's own auth manager and CLI parser are run in-process."""

from __future__ import annotations

import json
import stat

import pytest

from include.local.airflow_api import PASSWORDS_FILE, AirflowAPI
from include.local.stack import Ports, admin_password_file, airflow_command, airflow_env
from include.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(_env_file=None, state_dir=tmp_path / "state", webhook_token="t" * 32)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_airflow_listens_on_loopback_and_reads_the_admin_password_from_a_private_generated_file(settings):
    env = airflow_env(settings, Ports(airflow=28080, mlflow=25000))
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:28080"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    path = settings.state_dir / "airflow" / PASSWORDS_FILE
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    assert mode(path) == 0o600
    password = json.loads(path.read_text())["admin"]
    assert len(password) >= 20 and password != "admin"
    assert AirflowAPI("http://127.0.0.1:28080", settings.state_dir / "airflow").password() == password
    assert [p.name for p in path.parent.iterdir()] == [PASSWORDS_FILE], "no temporary file is left behind"


def test_the_password_is_kept_across_starts_and_differs_between_state_dirs(settings, tmp_path):
    first = json.loads(admin_password_file(settings).read_text())["admin"]
    airflow_env(settings, Ports(airflow=28080, mlflow=25000))
    assert json.loads(admin_password_file(settings).read_text())["admin"] == first
    other = Settings(_env_file=None, state_dir=tmp_path / "other")
    assert json.loads(admin_password_file(other).read_text())["admin"] != first


def test_a_file_airflow_generated_earlier_keeps_its_password_and_is_made_private(settings):
    path = settings.state_dir / "airflow" / PASSWORDS_FILE
    path.parent.mkdir(parents=True)
    path.write_text('{"admin": "fromAnEarlierStart", "viewer": "v"}\n')
    path.chmod(0o644)
    assert admin_password_file(settings) == path
    assert json.loads(path.read_text()) == {"admin": "fromAnEarlierStart", "viewer": "v"}
    assert mode(path) == 0o600


def test_a_broken_password_file_is_named(settings):
    path = settings.state_dir / "airflow" / PASSWORDS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{admin")
    with pytest.raises(RuntimeError, match=f"{PASSWORDS_FILE} is not JSON.*delete it"):
        admin_password_file(settings)


def test_airflow_neither_generates_nor_prints_a_password_when_the_file_is_ours(settings, monkeypatch, capsys, caplog, tmp_path):
    """Airflow's simple auth manager, initialised as the API server does, with the embedded env."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    env = airflow_env(settings, Ports(airflow=28080, mlflow=25000))
    path = settings.state_dir / "airflow" / PASSWORDS_FILE
    before = path.read_text()
    for key in ("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    assert SimpleAuthManager.get_generated_password_file() == str(path)
    SimpleAuthManager().init()
    assert "Password for user" not in capsys.readouterr().out + caplog.text
    assert path.read_text() == before and mode(path) == 0o600
    assert SimpleAuthManager.get_passwords() == json.loads(before)

    # the control: a users' file Airflow has to fill in itself is printed (what the check above rules out)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "airflow-made.json"))
    SimpleAuthManager().init()
    assert "Password for user 'admin'" in capsys.readouterr().out + caplog.text


def test_the_scheduler_runs_without_the_worker_log_server_and_airflow_accepts_the_flag():
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    scheduler = airflow_command("scheduler")
    assert scheduler[1:] == ["scheduler", "--skip-serve-logs"]
    assert parser.parse_args(scheduler[1:]).skip_serve_logs is True
    assert airflow_command("api-server", "--port", "28080")[1:] == ["api-server", "--port", "28080"]
    assert "--skip-serve-logs" not in airflow_command("dag-processor")
