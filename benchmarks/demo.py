"""`medfilip demo` in a fresh data root, recorded: the README's "Demo timing" figures.

    .venv/bin/python benchmarks/demo.py [--home DIR] [--salt demo-benchmark]

Runs what `make demo` runs (corpus, ingestion_job, model_job with its four evaluations) in a
fresh home (a temporary one unless --home, which is kept for later look-ups such as
benchmarks/pretraining_ablation.py on its checkpoint), with a fixed patient salt so that the
patient-wise splits, and so the numbers, repeat. Writes benchmarks/results/demo.json from the
demo's own summary (<home>/demo_summary.json): seconds per step, rows, the validation and
held-out zero-shot AUCs, and every pre-trained-vs-baseline arm and paired interval.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.demo import SUMMARY_FILE  # noqa: E402
from testkit.results import REPO, run_start, write_result  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, help="the data root to create (must not exist); default: temporary")
    parser.add_argument("--salt", default="demo-benchmark", help="MEDFILIP_PATIENT_SALT: fixes the splits")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = run_start()
    with tempfile.TemporaryDirectory(prefix="medfilip-demo-") as tmp:
        home = args.home or Path(tmp) / "home"
        if home.exists():
            raise SystemExit(f"{home} exists: the demo is measured from an empty data root; remove it or pick another")
        home.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in ("MEDFILIP_CONFIG", "DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
        env.update(MEDFILIP_HOME=str(home), MEDFILIP_PATIENT_SALT=args.salt,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
        # From inside the home: no medfilip.yaml of the caller's folder applies.
        done = subprocess.run([sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())",
                               "demo"], cwd=home, env=env)
        if done.returncode != 0:
            raise SystemExit(f"medfilip demo failed (exit {done.returncode}); its output is above")
        figures = json.loads((home / SUMMARY_FILE).read_text())
    write_result("demo", args, figures, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
