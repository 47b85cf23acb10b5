"""Security floors of the dependencies: `requirements.in` admits no release below the first one that
fixes a published advisory, and the locks (the project's and the bentos') pin releases above it.

A new advisory: raise the floor in `requirements.in`, add it to `FLOORS` with the advisory, and run
`make lock` if the lock's pin is below it (the second test says so).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

FLOORS: dict[str, tuple[str, str]] = {
    "mlflow": (
        "3.17.2",
        "CVE-2026-53995: path traversal through the trace id of POST /api/3.0/mlflow/traces (FileStore), 3.17.1 and earlier; "
        "3.10.x also has CVE-2026-4137 (world-writable temporary directories, fixed in 3.11.0)",
    ),
    "bentoml": (
        "1.4.39",
        "CVE-2026-44345 and CVE-2026-44346: Dockerfile directives injected through a bento's docker.base_image or envs "
        "run on the host at `bentoml containerize`, before 1.4.39",
    ),
    "apache-airflow-providers-fab": (
        "3.9.0",
        "CVE-2026-86462: a password changed through the user-edit endpoint left the user's sessions valid, 3.2.0 to before 3.9.0",
    ),
    "pyarrow": ("14.0.1", "CVE-2023-47248: arbitrary code execution when reading IPC, Feather or Parquet data, 0.14.0 to 14.0.0"),
}
RELEASED_WITH = {"mlflow-skinny": "mlflow"}
"""Packages released in lockstep with one of FLOORS (the bentos carry mlflow-skinny, not mlflow)."""


def requirements_in(path: Path = ROOT / "requirements.in") -> dict[str, Requirement]:
    """The requirements of a hand-kept input file, by canonical name (comments and options dropped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def pins(path: Path) -> dict[str, Version]:
    """`name==version` lines of a lock compiled by uv, by canonical name."""
    return {
        canonicalize_name(m["name"]): Version(m["version"])
        for m in re.finditer(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>\S+)", path.read_text(), re.M)
    }


def lowest_admitted(requirement: Requirement) -> Version | None:
    """The lowest release the requirement's lower bounds admit, or None when nothing bounds it from
    below (then any old release, advisories and all, would do)."""
    bounds = [
        Version(s.version.removesuffix(".*")) for s in requirement.specifier if s.operator in (">=", ">", "==", "~=", "===")
    ]
    return max(bounds, default=None)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_requirements_in_admits_no_release_below_the_advisory_fix(package):
    floor, advisory = FLOORS[package]
    requirement = requirements_in().get(package)
    assert requirement is not None, f"{package} is no longer in requirements.in: drop it from FLOORS"
    lowest = lowest_admitted(requirement)
    assert lowest is not None and lowest >= Version(floor), (
        f"requirements.in `{requirement}` admits {package} below {floor}, the first release without {advisory}: use `>={floor}`"
    )


@pytest.mark.parametrize("lock", ["requirements.txt", "include/serving/requirements.txt"])
def test_the_locks_pin_releases_above_the_floors_and_within_requirements_in(lock):
    pinned, wanted = pins(ROOT / lock), requirements_in()
    checked = {name: RELEASED_WITH.get(name, name) for name in pinned if RELEASED_WITH.get(name, name) in FLOORS}
    for name, package in checked.items():
        floor, advisory = FLOORS[package]
        assert pinned[name] >= Version(floor), f"{lock} pins {name}=={pinned[name]}, below {floor} ({advisory}): run `make lock`"
        if name in wanted:
            assert wanted[name].specifier.contains(pinned[name], prereleases=True), (
                f"{lock} pins {name}=={pinned[name]}, outside requirements.in's `{wanted[name]}`: run `make lock`"
            )
    assert {"mlflow-skinny", "bentoml", "pyarrow"} <= set(checked), f"{lock} was not parsed: {sorted(checked)}"


@pytest.mark.parametrize(
    ("line", "lowest"),
    [
        ("mlflow[auth]>=3.10,<4", "3.10"),
        ("apache-airflow==3.3.*", "3.3"),
        ("pyarrow", None),
        ("celery<5.7", None),
        ("x~=1.4.2", "1.4.2"),
    ],
)
def test_the_lowest_admitted_release_is_read_from_the_lower_bounds(line, lowest):
    assert lowest_admitted(Requirement(line)) == (Version(lowest) if lowest else None)


def test_the_floor_check_refuses_the_old_mlflow_requirement():
    floor = Version(FLOORS["mlflow"][0])
    assert lowest_admitted(Requirement("mlflow[auth]>=3.10,<4")) < floor


def test_the_lock_installs_xgboost_without_nvidias_nccl_on_linux():
    """`xgboost` pulls NVIDIA's NCCL (469 MB) on Linux; `xgboost-cpu` is the same package for CPUs."""
    pinned = pins(ROOT / "requirements.txt")
    assert "xgboost-cpu" in pinned and "xgboost" not in pinned and not any(n.startswith("nvidia-nccl") for n in pinned)


def test_a_logged_model_pins_the_xgboost_distribution_that_trained_it():
    import sys

    import xgboost

    from include.model.training import runtime_requirements

    pinned = dict(pin.split("==") for pin in runtime_requirements())
    assert pinned["xgboost-cpu" if sys.platform == "linux" else "xgboost"] == xgboost.__version__
    assert {"pandas", "numpy", "scikit-learn", "pyarrow"} <= set(pinned)
