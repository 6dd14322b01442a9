"""A benchmark's result file: what was run (command, commit, date, CPU, arguments) beside its
figures, so a number in the docs can be traced to the run that made it and re-run."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def cpu_description() -> str:
    """Model name and the cores this process may use (a shared machine says so in `note`)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable"


def git_commit(repo: Path = RESULTS_DIR.parents[1]) -> str:
    """HEAD's hash, with `+dirty` when tracked files differ from it (the figures are then not
    exactly those of the commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_result(name: str, args: dict[str, Any], figures: dict[str, Any], **extra: Any) -> Path:
    """benchmarks/results/<name>.json with command, commit, date, cpu, args and figures."""
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": git_commit(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_description(),
              "args": args, "figures": figures, **extra}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
