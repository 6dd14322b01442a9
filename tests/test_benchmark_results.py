"""Every figure has its command: each benchmarks/results/*.json has the keys of testkit/results.py
and names a command that exists (the script is there, its parser takes the arguments and gives
back the recorded `args`); every results file (or pattern of them) the README and docs cite is there."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

from testkit.results import REPO, RESULT_KEYS, RESULTS_DIR, json_args, write_result

RESULTS = sorted(RESULTS_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _parser(script: str) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "build_parser"), f"{script} has no build_parser(): its command cannot be checked"
    return module.build_parser()


def check_result(path: Path) -> None:
    record = json.loads(path.read_text())
    assert set(RESULT_KEYS) <= set(record), f"{path.name} lacks {set(RESULT_KEYS) - set(record)}"
    words = shlex.split(record["command"])
    assert words[0] == "python" and re.fullmatch(r"benchmarks/\w+\.py", words[1]), record["command"]
    assert (REPO / words[1]).is_file(), f"{path.name}: {words[1]} does not exist"
    try:
        parsed = _parser(words[1]).parse_args(words[2:])
    except SystemExit:
        pytest.fail(f"{path.name}: {words[1]} does not accept {words[2:]}")
    assert json_args(parsed) == record["args"], f"{path.name}: the command's arguments are not the recorded ones"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", record["commit"]), record["commit"]
    assert dt.datetime.fromisoformat(record["date"]).tzinfo is not None
    assert {"model", "cores", "load_average_start", "load_average_end"} <= set(record["cpu"])
    figures = record["figures"]
    assert figures and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                           for v in figures.values()), f"{path.name}: figures must be a flat map of numbers"


def test_there_are_results():
    assert RESULTS, "benchmarks/results/ is empty"


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_results_file_names_a_command_that_exists(path):
    check_result(path)


def cited_results(text: str) -> set[str]:
    """The benchmarks/results/ files a text names: results files and their plots, a `*` pattern
    (`ingest_2544x3056_*.json`) standing for the files it matches."""
    return set(re.findall(r"benchmarks/results/([\w*-]+\.(?:json|png))", text))


def missing_results(names: set[str], results_dir: Path = RESULTS_DIR) -> list[str]:
    return sorted(name for name in names if not any(results_dir.glob(name)))


def test_every_cited_results_file_exists():
    cited = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        cited |= cited_results(doc.read_text())
    assert cited, "README and docs cite no results file"
    assert missing_results(cited) == [], "README/docs quote results files that are not in benchmarks/results/"


def test_a_cited_results_file_that_is_not_there_is_found(tmp_path):
    (tmp_path / "ingest_512_uncompressed.json").write_text("{}")
    text = ("measured (`benchmarks/results/ingest_512_uncompressed.json`), the rest in "
            "benchmarks/results/ingest_*.json and benchmarks/results/gone.json; "
            "curves: benchmarks/results/gone_curves.png, benchmarks/results/scale_*.json")
    cited = cited_results(text)
    assert cited == {"ingest_512_uncompressed.json", "ingest_*.json", "gone.json", "gone_curves.png", "scale_*.json"}
    assert missing_results(cited, tmp_path) == ["gone.json", "gone_curves.png", "scale_*.json"]


def test_the_check_fails_on_a_command_that_does_not_exist(tmp_path):
    """The checker itself: a good record passes; an unknown option, a missing script or a record
    whose args differ from its command each fail."""
    argv = [str(REPO / "benchmarks/extract.py"), "--quality"]
    args = _parser("benchmarks/extract.py").parse_args(argv[1:])
    good = write_result("x", args, {"f1": 0.5}, argv=argv, results_dir=tmp_path)
    check_result(good)
    record = json.loads(good.read_text())
    assert record["command"] == "python benchmarks/extract.py --quality"
    for broken in ({"command": "python benchmarks/extract.py --no-such-option"},
                   {"command": "python benchmarks/nowhere.py"},
                   {"args": {**record["args"], "quality": False}},
                   {"figures": {"table": {"nested": 1}}}):
        path = tmp_path / "broken.json"
        path.write_text(json.dumps({**record, **broken}))
        with pytest.raises((AssertionError, pytest.fail.Exception, FileNotFoundError)):
            check_result(path)
    with pytest.raises(TypeError, match="not numbers"):
        write_result("y", args, {"f1": "0.5"}, argv=argv, results_dir=tmp_path)
