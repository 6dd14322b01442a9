"""One evaluation as an MLflow run nested under the model's run: metrics, results files, plots.

Plain mlflow, no Dagster: the evaluation assets and benchmarks/evaluate.py share it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.storage import write_text
from evaluation.report import markdown_table, plot_examples, plot_roc, write_json


@dataclass
class EvaluationRecord:
    run_id: str
    table: str  # the results as markdown
    metrics: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)  # "results", "table", "roc", "examples"


def finite_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, non-NaN entries of a summary, as floats (MLflow refuses the rest)."""
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def log_evaluation(name: str, results: Mapping[str, Any], summary: Mapping[str, Any], out_dir: Path, *,
                   experiment_id: str, parent_run_id: str, tags: Mapping[str, str] | None = None,
                   roc: Mapping | None = None, examples: Any = None, params: Mapping[str, Any] | None = None,
                   datasets: list[tuple[str, str, str]] | None = None) -> EvaluationRecord:
    """Write results.json / results.md (and roc.png / examples.png) under `out_dir` and log them,
    with the summary's numbers as metrics, `params`, and `datasets` ((name, digest, location)
    inputs), in a run named `name` under `parent_run_id`."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    from tracking.store import local_source

    out_dir.mkdir(parents=True, exist_ok=True)
    record = EvaluationRecord(run_id="", table=markdown_table(results), metrics=finite_metrics(summary))
    record.files["results"] = write_json(results, out_dir / "results.json")
    record.files["table"] = write_text(out_dir / "results.md", record.table)
    if roc:
        record.files["roc"] = plot_roc(roc, out_dir / "roc.png")
    if examples is not None:
        record.files["examples"] = plot_examples(examples, out_dir / "examples.png")
    run_tags = {"mlflow.parentRunId": parent_run_id, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=run_tags) as run:
        if params:
            mlflow.log_params({k: v for k, v in params.items() if v not in (None, "")})
        for dataset_name, digest, location in datasets or []:
            mlflow.log_input(MetaDataset(local_source(location), name=dataset_name, digest=digest),
                             context="evaluation")
        mlflow.log_metrics(record.metrics)
        for path in record.files.values():
            mlflow.log_artifact(str(path))
    record.run_id = run.info.run_id
    return record
