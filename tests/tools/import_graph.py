"""Print the import graph of `include/` and fail if it has a cycle.

    python tests/tools/import_graph.py            # the stages (subpackages and top-level modules)
    python tests/tools/import_graph.py --modules  # every module

Every import counts, function-level ones included (grimp, the graph import-linter checks). The
layer rules themselves are import-linter's contracts in pyproject.toml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_graph(modules: bool = False) -> dict[str, set[str]]:
    """importer → imported, within `include` (stages, or every module with `modules`)."""
    import grimp

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("include")

    def node(name: str) -> str:
        return name if modules else ".".join(name.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        a = node(importer)
        edges.setdefault(a, set())
        for imported in graph.find_modules_directly_imported_by(importer):
            b = node(imported)
            if a != b and b.startswith("include."):
                edges[a].add(b)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="every module, not just the stages")
    args = parser.parse_args(argv)
    edges = import_graph(args.modules)
    for importer in sorted(edges):
        print(f"{importer}\n    → {', '.join(sorted(edges[importer])) or '(nothing of ours)'}")
    cycle = find_cycle(edges)
    if cycle:
        print(f"\nCYCLE: {' → '.join(cycle)}", file=sys.stderr)
        return 1
    print(f"\n{len(edges)} {'modules' if args.modules else 'stages'}, {sum(map(len, edges.values()))} imports, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
