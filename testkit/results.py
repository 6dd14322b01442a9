"""One results file per benchmark run: benchmarks/results/<name>.json, the source of every figure
the README and docs quote.

Keys: `command` (the command line, from the repository root, that reproduces the run), `commit`
(git HEAD, "+dirty" when tracked files other than Markdown differed from it), `date` (UTC), `cpu` (model, cores and
the load average before and after: a load above the core count means other jobs shared the
machine), `args` (the parsed arguments) and `figures` (a flat map of named numbers).
`tests/test_benchmark_results.py` checks every file: the keys, and that the command's script
exists and its parser accepts the arguments and gives back `args`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULT_KEYS = ("command", "commit", "date", "cpu", "args", "figures")


@dataclass(frozen=True)
class RunStart:
    load_average: float
    commit: str


def run_start() -> RunStart:
    """Call first thing in a benchmark: the load and the code's commit when the run began (a long
    run must not record a commit made while it ran)."""
    return RunStart(load_average(), git_commit())


def write_result(name: str, args: argparse.Namespace | Mapping[str, Any], figures: Mapping[str, float],
                 *, argv: Sequence[str] | None = None, started: RunStart | None = None,
                 results_dir: Path | None = None) -> Path:
    """Writes benchmarks/results/<name>.json for this run of the calling script; `argv` defaults
    to sys.argv (the script first), `started` to now."""
    argv = list(sys.argv if argv is None else argv)
    bad = {k: v for k, v in figures.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"figures must be a flat map of numbers; not numbers: {sorted(bad)}")
    script = Path(argv[0]).resolve()
    record = {
        "command": shlex.join(["python", str(script.relative_to(REPO)) if script.is_relative_to(REPO) else argv[0],
                               *argv[1:]]),
        "commit": started.commit if started else git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "cpu": cpu_description(started.load_average if started else None),
        "args": json_args(args),
        "figures": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()},
    }
    # A test that runs a benchmark points it elsewhere, so the committed record stays the real run's.
    path = (results_dir or Path(os.environ.get("MEDFILIP_RESULTS_DIR") or RESULTS_DIR)) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", file=sys.stderr)
    return path


def flat_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested mappings, keys joined by "." (lists by index); other leaves
    (strings, None) are left out."""
    flat: dict[str, float] = {}
    items = tree.items() if isinstance(tree, Mapping) else enumerate(tree)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)):
            flat.update(flat_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def evaluation_figures(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The headline numbers of an evaluation report (evaluation.zero_shot / retrieval / finetune /
    segmentation): mean AUC / F1 with intervals, Recall@K, and per fine-tuning or segmentation arm
    the mean and sd over seeds, per comparison the difference and its paired interval."""
    figures: dict[str, float] = {}
    for key in ("mean_auc", "mean_f1", "mean_acc"):
        if key in report:
            figures[f"{prefix}{key}"] = report[key]
            if f"{key}_ci" in report:
                figures.update({f"{prefix}{key}_ci_low": report[f"{key}_ci"][0],
                                f"{prefix}{key}_ci_high": report[f"{key}_ci"][1]})
    for direction in ("image_to_text", "text_to_image"):
        figures.update({f"{prefix}{direction}_{k}": v for k, v in report.get(direction, {}).items() if "@" in k})
    for arm in report.get("arms", []):
        name = "_".join(str(arm[k]) for k in ("mode", "init", "fraction") if k in arm)
        for metric in ("mean_auc", "mean_dice", "mean_iou", "mean_dice_with_mask", "empty_predicted_without_mask"):
            if metric in arm:
                figures.update({f"{prefix}{name}_{metric}": arm[metric], f"{prefix}{name}_{metric}_sd": arm[f"{metric}_sd"]})
    for c in report.get("comparisons", []):
        name = "_".join(str(c[k]) for k in ("mode", "fraction", "subset") if k in c) + f"_vs_{c['baseline_init']}"
        difference = c["difference"]
        figures.update({f"{prefix}{name}_difference": difference["mean"], f"{prefix}{name}_ci_low": difference["ci"][0],
                        f"{prefix}{name}_ci_high": difference["ci"][1],
                        f"{prefix}{name}_better": {"better": 1, "worse": -1}.get(c["verdict"], 0)})
    return figures


def json_args(args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The parsed arguments as JSON values (paths as strings), the form the results test compares."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return json.loads(json.dumps(items, default=str))


def cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for children (decode or loader workers)."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def load_average() -> float:
    return os.getloadavg()[0]


def cpu_description(started_load: float | None = None) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    start = load_average() if started_load is None else started_load
    return {"model": model, "cores": cores, "load_average_start": round(start, 2),
            "load_average_end": round(load_average(), 2),
            "shared": "a load average above the core count means other jobs shared the CPU; "
                      "compare ratios measured in one run, not absolute speeds across runs"}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results", ":!*.md")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")
