"""The import graph of include/ has no cycle, and the cycle finder behind `make graph` finds one."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    return importlib.import_module("tests.tools.import_graph")


def test_the_cycle_finder_finds_a_planted_cycle(tool):
    assert tool.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert tool.find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("modules", [False, True], ids=["stages", "modules"])
def test_include_has_no_import_cycle(tool, modules):
    edges = tool.import_graph(modules)
    assert tool.find_cycle(edges) is None
    stages = set(edges) if not modules else {".".join(m.split(".")[:2]) for m in edges}
    assert {
        "include.data",
        "include.model",
        "include.monitoring",
        "include.serving",
        "include.rollout",
        "include.local",
    } <= stages


def test_serving_stays_below_training_monitoring_and_rollout(tool):
    edges = tool.import_graph()
    assert not edges["include.serving"] & {"include.model", "include.monitoring", "include.rollout", "include.airflow_glue"}
    assert not any("include.local" in imported for importer, imported in edges.items() if importer != "include.local")


def test_the_bento_carries_everything_the_service_imports_and_nothing_more():
    """Every module of ours the service imports (transitively) is in the bento's include list; the
    list names no module the service does not need."""
    import fnmatch

    import grimp

    from include.model.packaging import BENTO_INCLUDE

    graph = grimp.build_graph("include")
    needed = {"include.serving.service", *graph.find_upstream_modules("include.serving.service")}
    paths = {m.replace(".", "/") + ("/__init__.py" if graph.find_children(m) else ".py") for m in needed}
    paths |= {"include/__init__.py"} | {p.rsplit("/", 1)[0] + "/__init__.py" for p in paths if p.count("/") > 1}
    carried = {p.relative_to(ROOT).as_posix() for pattern in BENTO_INCLUDE for p in ROOT.glob(pattern)}
    missing = sorted(p for p in paths if not any(fnmatch.fnmatch(p, pattern) for pattern in BENTO_INCLUDE))
    assert not missing, f"the service imports modules the bento does not carry: {missing}"
    assert not {"include/model", "include/monitoring", "include/rollout", "include/local"} & {
        p.rsplit("/", 1)[0] for p in carried
    }


def test_dags_and_plugins_never_import_the_embedded_runtime():
    """`include.local` is the embedded runtime only: DAG files and plugins never import it (the
    contracts in pyproject.toml cover `include/` itself)."""
    import ast

    offenders = []
    for path in [*(ROOT / "dags").glob("*.py"), *(ROOT / "plugins").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("include.local")]
    assert not offenders, offenders
