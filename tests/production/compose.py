"""Read docker-compose.yaml the way Compose does, for the tests that check it without an engine
and for the native production stack, which takes its configuration from it.

`interpolate` implements the Compose Specification's interpolation (`${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `$$`); `loopback` rewrites the service names
and container paths of a resolved environment to the addresses and directories of the same
services running as local processes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"

_VAR = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(KeyError):
    """A `${VAR:?message}` whose variable is unset: Compose refuses to start with the message."""


def load() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def variables(text: str) -> set[str]:
    """Every variable `text` interpolates."""
    return {m["name"] or m["bare"] for m in _VAR.finditer(text) if m["name"] or m["bare"]}


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m["name"] or m["bare"]
        op, arg, current = m["op"], m["arg"] or "", env.get(name)
        unset_or_empty = current is None or (current == "" and op and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else current
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VAR.sub(sub, value)


def service_env(doc: dict, service: str, env: dict[str, str]) -> dict[str, str]:
    """The resolved `environment` of `service` (YAML anchors and merges already applied)."""
    raw = doc["services"][service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items() if v is not None}


def loopback(env: dict[str, str], hosts: dict[str, str], paths: dict[str, str]) -> dict[str, str]:
    """`env` with each `service:port` in `hosts` (and each port-less `service` as a whole value)
    replaced by its loopback address, and each container path prefix in `paths` by a local one."""
    out = {}
    for key, value in env.items():
        for name, address in hosts.items():
            if ":" not in name and value == name:  # a host name as the whole value (LOOP_SLOT_HOST)
                value = address
            value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", address, value)
        for prefix in sorted(paths, key=len, reverse=True):  # the longest container path first
            if value == prefix or value.startswith(prefix + "/"):
                value = paths[prefix] + value[len(prefix) :]
                break
        out[key] = value
    return out


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's `ENV` instructions set with literal values (every container
    of the loop's image has them), e.g. PYTHONPATH and AIRFLOW_HOME."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if "$" not in value:
                    env[key] = value
    return env
