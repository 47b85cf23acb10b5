"""The import graph of include/ has no cycle, and the cycle finder behind `make graph` finds one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cycle_finder_finds_a_planted_cycle(tool):
    assert tool.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert tool.find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("modules", [False, True], ids=["stages", "modules"])
def test_include_has_no_import_cycle(tool, modules):
    edges = tool.import_graph(modules)
    assert tool.find_cycle(edges) is None
    stages = set(edges) if not modules else {".".join(m.split(".")[:2]) for m in edges}
    assert {"include.data", "include.model", "include.monitoring", "include.serving", "include.rollout", "include.local"} <= stages


def test_serving_stays_below_training_monitoring_and_rollout(tool):
    edges = tool.import_graph()
    assert not edges["include.serving"] & {"include.model", "include.monitoring", "include.rollout", "include.airflow_glue"}
    assert not any("include.local" in imported for importer, imported in edges.items() if importer != "include.local")
