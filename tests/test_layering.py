"""The stairs go one way: every import of every module (top-level and inside functions), read
from the source, checked against the layering the project promises its users."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEAF = "common"
LIBRARIES = ("ingestion", "extraction", "corpus", "training", "evaluation")
ORCHESTRATION = ("pipeline", "assets")
OURS = (LEAF, *LIBRARIES, *ORCHESTRATION)


def _modules() -> dict[str, Path]:
    found = {}
    for package in OURS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names], node.lineno))
    return out


MODULES = _modules()


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def forbidden_edges() -> list[str]:
    problems = []
    for name, path in MODULES.items():
        package = _top(name)
        for target, names, line in _imports(path):
            top = _top(target)
            where = f"{_shown(path)}:{line} imports {target}"
            if package == LEAF and top in OURS and top != LEAF:
                problems.append(f"{where}: {LEAF}/ is a leaf and imports nothing of ours")
            if package in LIBRARIES and (top in ORCHESTRATION or top == "dagster"):
                problems.append(f"{where}: libraries never import the Dagster layer")
            if package in ORCHESTRATION and top in LIBRARIES:
                private = [n for n in names if n.startswith("_")] + (["(private module)"] if any(
                    part.startswith("_") for part in target.split(".")[1:]) else [])
                if private:
                    problems.append(f"{where} {private}: only public names of the libraries")
    return problems


def test_no_forbidden_import_edges():
    assert MODULES, "no modules found: the walk itself is broken"
    assert forbidden_edges() == []


def test_libraries_have_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in MODULES if _top(name) in (LEAF, *LIBRARIES)}
    for name in graph:
        for target, names, _ in _imports(MODULES[name]):
            for candidate in [target, *(f"{target}.{n}" for n in names)]:
                if candidate in graph and candidate != name:
                    graph[name].add(candidate)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail
                              else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


@pytest.mark.parametrize("source, expected", [
    ("from pipeline.settings import layout\n", "libraries never import the Dagster layer"),
    ("import dagster as dg\n", "libraries never import the Dagster layer"),
])
def test_the_walk_catches_a_library_climbing_into_the_dagster_layer(tmp_path, monkeypatch, source, expected):
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    monkeypatch.setitem(MODULES, "training.bad", bad)
    problems = forbidden_edges()
    assert len(problems) == 1 and expected in problems[0]
