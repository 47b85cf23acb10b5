"""The production stack's credentials: generated once per deployment, never shipped.

    python -m include.credentials generate [--env-file .env]   # `make secrets`
    python -m include.credentials mlflow-user                  # the `mlflow-init` service

`generate` writes every secret `docker-compose.yaml` needs into `.env` (ignored by git, mode
0600): passwords, the Airflow keys shared by all its components, the S3 keys of the loop and of
MLflow, the webhook token. It never changes a value that is set: a missing or empty one is added,
so it is safe to rerun after an upgrade that needs a new secret. Rotating a secret means deleting
its line and running it again (docs/production.md says which services to restart).

`mlflow-user` runs inside the stack once the MLflow server is up: as MLflow's admin it creates the
loop's own, non-admin MLflow user, or sets its password to the current one.

Standard library only (the generator runs before anything is installed); MLflow is imported by
`mlflow-user` alone.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent.parent / ".env"


def _password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]: safe in URLs, .env and ini files


@dataclass(frozen=True)
class Secret:
    name: str
    description: str
    make: Callable[[], str] = _password


SECRETS = (
    Secret("POSTGRES_PASSWORD", "PostgreSQL superuser `postgres` (the database server and its init only)."),
    Secret("AIRFLOW_DB_PASSWORD", "PostgreSQL role `airflow`, owner of the Airflow metadata database."),
    Secret("MLFLOW_DB_PASSWORD", "PostgreSQL role `mlflow`, owner of MLflow's tracking and user databases."),
    Secret(
        "AIRFLOW_FERNET_KEY",
        "Encrypts Airflow connections and variables in the database.",
        lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    ),
    Secret(
        "AIRFLOW_JWT_SECRET",
        "Signs the JWTs of Airflow's APIs; the same in every Airflow component.",
        lambda: secrets.token_urlsafe(64),
    ),
    Secret("AIRFLOW_API_SECRET_KEY", "The API server's session key (login, CSRF) and the key workers' logs are fetched with."),
    Secret("AIRFLOW_ADMIN_PASSWORD", "Airflow UI and API user `admin` (FAB), created or reset by `airflow-init`."),
    Secret("FLOWER_PASSWORD", "Flower user `flower` (basic auth), with `--profile flower`."),
    Secret(
        "MINIO_ROOT_USER", "MinIO's root user: the console login and `minio-init` only.", lambda: f"admin-{secrets.token_hex(4)}"
    ),
    Secret("MINIO_ROOT_PASSWORD", "MinIO root user's password."),
    Secret(
        "MINIO_LOOP_ACCESS_KEY",
        "S3 key of the loop (Airflow tasks and the slots): bucket `loop-data` only.",
        lambda: f"loop-{secrets.token_hex(6)}",
    ),
    Secret("MINIO_LOOP_SECRET_KEY", "Secret of that key."),
    Secret(
        "MINIO_MLFLOW_ACCESS_KEY",
        "S3 key of the MLflow server: bucket `loop-mlflow` only.",
        lambda: f"mlflow-{secrets.token_hex(6)}",
    ),
    Secret("MINIO_MLFLOW_SECRET_KEY", "Secret of that key."),
    Secret(
        "MLFLOW_ADMIN_PASSWORD",
        "MLflow user `admin`, created on the server's first start (later changes: see docs/production.md).",
    ),
    Secret("MLFLOW_LOOP_PASSWORD", "MLflow user `loop` (not an admin), what the Airflow tasks log in as; set by `mlflow-init`."),
    Secret("MLFLOW_SECRET_KEY", "MLflow server's Flask key (CSRF of its login forms); the same in every MLflow worker."),
    Secret("LOOP_WEBHOOK_TOKEN", "Bearer token of the alert webhook on the Airflow API server."),
)

_LINE = re.compile(r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")


def fresh() -> dict[str, str]:
    """A new value for every secret (what a new deployment, or a test of the stack, starts with)."""
    return {s.name: s.make() for s in SECRETS}


def missing(text: str) -> list[str]:
    """Names of SECRETS that `text` (an env file) does not set to a non-empty value."""
    values = {}
    for line in text.splitlines():
        if m := _LINE.match(line):
            values[m["name"]] = m["value"].strip("'\"")
    return [s.name for s in SECRETS if not values.get(s.name)]


def fill(text: str) -> tuple[str, list[str]]:
    """`text` with every missing or empty secret generated: empty `NAME=` lines are filled in place
    (each with the same value), an absent name is appended. Set values, other lines and comments
    stay as they are."""
    todo = missing(text)
    new = {name: value for name, value in fresh().items() if name in todo}
    lines, placed = [], set()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m["name"] in new and not m["value"].strip("'\""):
            line = f"{m['name']}={new[m['name']]}"
            placed.add(m["name"])
        lines.append(line)
    if appended := [name for name in new if name not in placed]:
        lines += ["", "# Generated by `make secrets` (include/credentials.py); keep this file private."]
        lines += [f"{name}={new[name]}" for name in appended]
    return "\n".join(lines).lstrip("\n") + "\n", todo


def generate(env_file: Path = ENV_FILE) -> list[str]:
    """Add the missing secrets to `env_file` (created if absent) and leave it at mode 0600.
    Returns the names added."""
    text = env_file.read_text() if env_file.exists() else ""
    updated, added = fill(text)
    if added:
        # A private temporary file renamed over the old one: the secrets are never world-readable,
        # and a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=env_file.parent, prefix=f".{env_file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(updated)
            os.replace(tmp, env_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    elif env_file.exists():
        os.chmod(env_file, 0o600)
    return added


def ensure_mlflow_user(tracking_uri: str, username: str, password: str) -> str:
    """Create MLflow user `username` (not an admin) or set its password; needs admin credentials in
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. Returns `created` or `updated`."""
    from mlflow.exceptions import RestException
    from mlflow.server import get_app_client

    client = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        client.create_user(username, password)
        return "created"
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    client.update_user_password(username, password)
    return "updated"


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"{name} is not set: run `make secrets` and start the stack with the .env it writes")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.credentials", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="add the missing secrets to the env file (`make secrets`)")
    gen.add_argument("--env-file", type=Path, default=ENV_FILE)
    commands.add_parser("mlflow-user", help="create or update the loop's MLflow user (the mlflow-init service)")
    args = parser.parse_args(argv)

    if args.command == "generate":
        added = generate(args.env_file)
        if added:
            print(f"{args.env_file}: added {len(added)} secrets ({', '.join(added)}); mode 0600, ignored by git")
        else:
            print(f"{args.env_file}: every secret is already set; nothing changed")
        return 0
    uri, user = _required("MLFLOW_TRACKING_URI"), _required("MLFLOW_LOOP_USERNAME")
    outcome = ensure_mlflow_user(uri, user, _required("MLFLOW_LOOP_PASSWORD"))
    print(f"MLflow user {user!r} at {uri}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
