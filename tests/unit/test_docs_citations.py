"""What the README and the docs cite exists: repository paths, settings, make targets, test names and
relative links. A renamed module or a removed variable fails here instead of misleading a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from include.settings import PROJECT_ROOT, Settings

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
TOP = ("dags/", "plugins/", "include/", "tests/", "docs/", "backtest/", ".ci/")
COMPOSE_ONLY = {"LOOP_IMAGE", "LOOP_GIT_COMMIT"}  # read by docker-compose.yaml and the Makefile, not the settings class


def cited(pattern: str) -> list[tuple[str, str]]:
    return [(page.name, m) for page in PAGES for m in re.findall(pattern, page.read_text())]


def generated(path: str) -> bool:
    """A path git ignores because a command makes it (`backtest/fits/`, the backtest's cache)."""
    ignored = [
        line.strip().strip("/")
        for line in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(path.strip("/") == pattern or path.startswith(pattern + "/") for pattern in ignored)


def test_every_cited_path_exists():
    missing = []
    for page, code in cited(r"`([^`\s]+)`"):
        path = code.split(":")[0].rstrip(".,;")
        if (
            path.startswith(TOP)
            and not any(c in path for c in "<>*{}$")
            and not generated(path)
            and not (PROJECT_ROOT / path).exists()
        ):
            missing.append(f"{page}: {code}")
    assert not missing, missing


def test_every_cited_setting_is_one():
    fields = {f"LOOP_{name.upper()}" for name in Settings.model_fields} | COMPOSE_ONLY
    compose = (PROJECT_ROOT / "docker-compose.yaml").read_text() + (PROJECT_ROOT / ".env.example").read_text()
    unknown = sorted(
        {f"{page}: {v}" for page, v in cited(r"\b(LOOP_[A-Z0-9_]*[A-Z0-9])\b") if v not in fields and v not in compose}
    )
    assert not unknown, unknown


def test_every_cited_make_target_exists():
    targets = set(re.findall(r"^([a-z-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.M))
    unknown = sorted({f"{page}: make {t}" for page, t in cited(r"`make ([a-z-]+)") if t not in targets})
    assert not unknown, unknown


def test_every_cited_test_exists():
    files = list((PROJECT_ROOT / "tests").rglob("*.py"))
    known = {p.stem for p in files} | {n for p in files for n in re.findall(r"def (test_[a-z0-9_]+)", p.read_text())}
    unknown = sorted({f"{page}: {t}" for page, t in cited(r"\b(test_[a-z0-9_]+)\b") if t not in known})
    assert not unknown, unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_row_has_as_many_cells_as_its_header(page: Path):
    """An unescaped `|` inside a cell (say `|Δ|`) splits it, and the rest of the row drops out."""
    bad, columns = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if not line.startswith("|"):
            columns = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line)) - 1
        if columns is None:
            columns = cells
        elif cells != columns:
            bad.append(f"line {number}: {cells} cells, the header has {columns}")
    assert not bad, bad
