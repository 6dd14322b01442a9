"""The stairs go one way: every import of every module (top-level and inside functions), read
from the source, checked against the layering the project promises its users (README, "The house").

    pipeline  ->  assets  ->  tracking  ->  evaluation, training  ->  medfilip_model, knowledge, extraction,
    ingestion, corpus  ->  common                      (benchmarks and testkit sit beside, on top)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEAF = "common"
LIBRARIES = ("ingestion", "extraction", "corpus", "medfilip_model", "knowledge", "training", "evaluation")
TRACKING = "tracking"
DAGSTER_LAYER = ("pipeline", "assets")
OURS = (LEAF, *LIBRARIES, TRACKING, *DAGSTER_LAYER, "testkit", "benchmarks")


def _modules() -> dict[str, Path]:
    found = {}
    for package in OURS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if any(part.startswith(".") for part in parts):
                continue  # a hidden folder, such as the comparators' own .venv under benchmarks/
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
            if top == "tests":
                problems.append(f"{where}: nothing outside tests/ imports tests/ (shared code lives in testkit/)")
            if package == LEAF and top in OURS and top != LEAF:
                problems.append(f"{where}: {LEAF}/ is a leaf and imports nothing of ours")
            if package in (*LIBRARIES, TRACKING) and (top in DAGSTER_LAYER or top == "dagster"):
                problems.append(f"{where}: libraries never import the Dagster layer")
            if package in LIBRARIES and top == TRACKING:
                problems.append(f"{where}: tracking records what the libraries produce; they never import it")
            if package == "evaluation" and top == "training":
                problems.append(f"{where}: evaluation imports the model and knowledge packages, never the trainer")
            if package in ("medfilip_model", "knowledge") and top in ("training", "evaluation"):
                problems.append(f"{where}: the model and knowledge packages sit below the trainer and evaluation")
            if package == "assets" and top == "pipeline":
                problems.append(f"{where}: assets sit below pipeline/ (definitions, jobs, sensors, CLI)")
            if top in OURS and top != package:
                private = [n for n in names if _private(n)] + (["(private module)"] if any(
                    _private(part) for part in target.split(".")[1:]) else [])
                if private:
                    problems.append(f"{where} {private}: only public names of another package")
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _cycles(graph: dict[str, set[str]]) -> list[str]:
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
    return cycles


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in graph:
        for target, names, _ in _imports(MODULES[name]):
            for candidate in [target, *(f"{target}.{n}" for n in names)]:
                if candidate in graph and candidate != name:
                    graph[name].add(candidate)
    return graph


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in OURS}
    for name, targets in module_graph().items():
        graph[_top(name)] |= {_top(t) for t in targets if _top(t) != _top(name)}
    return graph


def test_no_forbidden_import_edges():
    assert MODULES, "no modules found: the walk itself is broken"
    assert forbidden_edges() == []


def test_no_file_imports_another_in_a_loop():
    assert _cycles(module_graph()) == []


def test_the_package_graph_is_acyclic():
    assert _cycles(package_graph()) == []


def test_exactly_one_module_holds_the_mlflow_store_fallback():
    holders = [_shown(path) for name, path in MODULES.items()
               if _top(name) not in ("testkit", "benchmarks") and "sqlite:///" in path.read_text()]
    assert holders == ["tracking/store.py"]


@pytest.mark.parametrize("source, expected", [
    ("from pipeline.settings import layout\n", "libraries never import the Dagster layer"),
    ("import dagster as dg\n", "libraries never import the Dagster layer"),
    ("from training.loop import train\n", "never the trainer"),
    ("from tests.servers import Server\n", "nothing outside tests/ imports tests/"),
])
def test_the_walk_catches_a_forbidden_edge(tmp_path, monkeypatch, source, expected):
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    monkeypatch.setitem(MODULES, "evaluation.bad", bad)
    problems = forbidden_edges()
    assert len(problems) == 1 and expected in problems[0]


def test_the_walk_catches_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []
