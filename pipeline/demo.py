"""What `make demo` runs with, and what it prints: sized so that the whole graph finishes in
minutes on a 2-core CPU and the model still learns something measurable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common.home import Layout

DEMO_STUDIES = 3000
# The ten pNN folders as shards: 3,000 studies over ~900 subject-prefix shards would be 900
# runs of a few images each, all start-up cost (ingestion/layout.py PARTITION_DIGITS).
DEMO_PARTITION_DIGITS = 2
# Rendered small and stored at the demo model's input size: decoding and training at 96 px is
# what fits a 2-core CPU; the pipeline defaults (512 px corpus, 448 px cxr_images) are for real use.
DEMO_CORPUS = {"image_size": 192}
DEMO_OPS_CONFIG = {
    "cxr_images": {"config": {"image_size": 96, "workers": 2}},
    # The demo preset trains on present findings only, in SSM groups apart from any negation: with
    # the frozen text encoder, negated texts invert the zero-shot AUCs (see training.config.PRESETS).
    "training_texts": {"config": {"drop_negated": True}},
    "ssm": {"config": {"separate_negations": True}},
    # pretrained_model: no preset here, so `training:` of medfilip.yaml applies (default: demo).
    **{name: {"config": {"n_boot": 200, "epochs": 3}} for name in ("zero_shot_eval", "retrieval_eval")},
    # Three seeds per pre-training comparison; each seed on the first 400 / 300 of the 750 images
    # keeps the two assets near their single-seed cost on the whole set.
    "finetune_eval": {"config": {"n_boot": 200, "epochs": 3, "seeds": 3, "max_images": 400}},
    "segmentation_eval": {"config": {"n_boot": 200, "epochs": 3, "seeds": 3, "max_images": 300}},
}


PROMPT_SENSORS = ("prompt_change_sensor", "prompt_downstream_sensor")


def start_prompt_sensor(lay: Layout) -> str:
    """Switch on the prompt sensors in the instance (the daemon of `dagster dev` runs them)."""
    env = dict(os.environ, DAGSTER_HOME=str(lay.dagster_home))
    for sensor in PROMPT_SENSORS:
        command = [str(Path(sys.executable).with_name("dagster")), "sensor", "start", sensor,
                   "-m", "pipeline.definitions"]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"{sensor} could not be started: {done.stderr.strip().splitlines()[-1][-300:]}"
    return "on (" + ", ".join(PROMPT_SENSORS) + ")"


def print_demo_summary(lay: Layout, summaries: list[dict], timings: dict[str, float], sensor: str,
                       mlflow_uri: str) -> None:
    rows: dict[str, int] = {}
    assets: dict[str, dict] = {}
    failures, checks = [], []
    for summary in summaries:
        rows.update(summary["rows"])
        assets.update(summary["assets"])
        failures += summary["failures"]
        checks += summary.get("failed_checks", [])
    print()
    print("MedFILIP demo: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    for name in ("dicom_index", "cxr_images", "reports", "llm_extractions", "triplets", "training_texts", "ssm"):
        if name in rows:
            print(f"  {name:<16} {rows[name]:>7} rows")
    model = assets.get("pretrained_model", {})
    zero_shot = assets.get("zero_shot_eval", {})
    if model:
        print(f"  pretrained_model {model.get('registered_model', '')}  checkpoint sha256 {str(model.get('sha256'))[:16]}")
        print(f"  validation zero-shot mean AUC {model.get('zero_shot_mean_auc', float('nan')):.3f}")
    if zero_shot:
        print(f"  zero-shot mean AUC on the held-out NIH-layout set: {zero_shot.get('mean_auc', float('nan')):.3f} "
              f"(95% CI {format_ci(zero_shot.get('mean_auc_ci'))})")
    for name in ("finetune_eval", "segmentation_eval"):
        verdicts = {k.removeprefix("verdict_"): v for k, v in assets.get(name, {}).items() if k.startswith("verdict_")}
        if verdicts:
            print(f"  {name}, pre-trained vs baseline (paired bootstrap over seeds):")
        for key, line in verdicts.items():
            print(f"    {key}: {line}")
    for failure in failures:
        print(f"  FAILED {failure['step']} (run {failure['run_id'][:8]}): {failure['error'][:300]}")
    for check in checks:
        print(f"  check {check['severity']} {check['asset']}.{check['check']}"
              f"{' (' + check['partition'] + ')' if check['partition'] else ''}: {check['description'] or 'failed'}")
    print(f"Outputs:  {lay.data}")
    print(f"MLflow:   {mlflow_uri}" + (f"  run {model['mlflow_run_id']}" if model else ""))
    print(f"Prompt-change sensor: {sensor}")
    print("Open the UIs:  make ui      -> Dagster on http://127.0.0.1:3000")
    print("               make mlflow  -> MLflow on http://127.0.0.1:5000")
    print("Audit the model: .venv/bin/medfilip lineage " + json.dumps(str(model.get("path", "<checkpoint>"))))


SUMMARY_FILE = "demo_summary.json"  # in the data root: what benchmarks/demo.py records
FIGURE_ASSETS = ("pretrained_model", "zero_shot_eval", "retrieval_eval", "finetune_eval", "segmentation_eval")


def demo_figures(summaries: list[dict], timings: dict[str, float]) -> dict[str, float]:
    """The numbers the summary prints, flat: seconds per step, rows per asset, and every numeric
    metadata entry of the model and the evaluations (AUCs, arms, differences and their intervals)."""
    figures = {f"seconds.{step}": round(seconds, 1) for step, seconds in timings.items()}
    for summary in summaries:
        figures.update({f"rows.{name}": count for name, count in summary["rows"].items()})
        for name in FIGURE_ASSETS:
            for key, value in summary["assets"].get(name, {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    figures[f"{name}.{key}"] = value
                elif isinstance(value, str) and key.endswith("_ci") and "–" in value:  # "0.888–0.916"
                    low, high = value.split("–")
                    figures.update({f"{name}.{key}_low": float(low), f"{name}.{key}_high": float(high)})
    return figures


def format_ci(text: str | None) -> str:
    """"0.685–0.731" as recorded, or an older "(0.6846..., 0.7314...)" -> "0.685–0.731"."""
    from assets.metadata import format_interval

    if text and "–" in str(text):
        return str(text)
    try:
        low, high = (float(x) for x in str(text).strip("()[] ").split(","))
    except ValueError:
        return "n/a"
    return format_interval((low, high))
