"""`pretrained_model`: MedFILIP pre-training from cxr_images + training_texts + ssm, as an
MLflow run with its inputs' digests, the checkpoint file (sha256 in metadata) and a
registered model version. Small runs train in process; GPU boxes launch `torchrun` through
Dagster Pipes. The step declares pool "gpu" so two trainings never share a GPU by accident.
"""

import json
import shutil
import sys
from pathlib import Path

import dagster as dg

from assets.lineage import MODEL_ANCESTORS, TRAINING_INPUTS, collect_lineage
from assets.plots import figure_markdown
from assets.resources import MLflowResource, StorageResource, TrainingResource
from common.storage import file_sha256, write_text
from tracking.lineage import write_lineage
from tracking.store import DAGSTER_ASSET_TAG, DAGSTER_RUN_TAG


class PretrainConfig(dg.Config):
    """Empty / unset fields take the `training` resource's (medfilip.yaml `training:`)."""

    preset: str = ""  # training.config.PRESETS: demo (CPU minutes), paper or reference (the published code); default demo
    overrides_json: str = ""  # TrainConfig fields, e.g. {"epochs": 5, "loss": "infonce"}; on top of the file's
    launcher: str = ""  # in_process (default) or torchrun
    nproc_per_node: int = 0  # default 1
    fresh: bool = False  # start over instead of resuming an interrupted run with the same inputs


def resolved_training(config: PretrainConfig, defaults: TrainingResource) -> dict:
    """The run config merged onto the resource's: preset, overrides, launcher, nproc_per_node."""
    overrides = {**defaults.overrides, **json.loads(config.overrides_json or "{}")}
    return {"preset": config.preset or defaults.preset, "overrides": overrides,
            "launcher": config.launcher or defaults.launcher,
            "nproc_per_node": config.nproc_per_node or defaults.nproc_per_node}


@dg.asset(
    deps=["cxr_images", "training_texts", "ssm"],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="gpu",
    code_version="1",
)
def pretrained_model(
    context: dg.AssetExecutionContext, config: PretrainConfig, storage: StorageResource,
    mlflow_tracking: MLflowResource, training: TrainingResource,
) -> dg.MaterializeResult:
    """The pre-trained dual encoder: checkpoint file + sha256, MLflow run id and model version."""
    import mlflow

    from tracking.training_runs import (curves_figure, input_digests as digests_of, log_inputs, register_model,
                                        run_fingerprint)
    from training.config import resolve_train_config

    lay = storage.layout()
    chosen = resolved_training(config, training)
    if chosen["launcher"] not in ("in_process", "torchrun"):
        raise dg.Failure(f"launcher {chosen['launcher']!r} is unknown: use in_process or torchrun")
    try:
        train_config = resolve_train_config(chosen["preset"], chosen["overrides"])
    except ValueError as exc:
        raise dg.Failure(str(exc).splitlines()[0]) from None
    lineage = collect_lineage(context.instance, MODEL_ANCESTORS)
    fingerprint = run_fingerprint(train_config.model_dump(mode="json"), lineage)
    out_dir = lay.asset_dir("pretrained_model") / fingerprint
    if config.fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    resuming = (out_dir / "checkpoints" / "last.pt").exists()
    context.log.info(f"training {train_config.model} in {out_dir} ({'resuming' if resuming else 'new run'})")

    experiment_id = mlflow_tracking.activate(storage)
    extraction = next((e for e in lineage if e["asset"] == "llm_extractions"), {})
    tags = {
        DAGSTER_RUN_TAG: context.run.run_id,
        DAGSTER_ASSET_TAG: context.asset_key.to_user_string(),
        "medfilip.prompt_version": str(extraction.get("digests", {}).get("prompt_version", "")),
        "medfilip.extraction_backend": str(extraction.get("context", {}).get("backend", "")),
        "medfilip.extraction_model": str(extraction.get("context", {}).get("model", "")),
        "medfilip.fingerprint": fingerprint,
    }
    # A resumed training continues the MLflow run of the interrupted one, so its curves are whole.
    previous = mlflow_run_to_resume(out_dir) if resuming else None
    start = {"run_id": previous} if previous else {"experiment_id": experiment_id, "run_name": f"pretrain-{fingerprint[:8]}"}
    with mlflow.start_run(**start) as run:
        mlflow.set_tags(tags)
        input_digests = digests_of(lineage, TRAINING_INPUTS)
        if previous:
            context.log.info(f"continuing MLflow run {previous}")
        else:
            write_text(out_dir / MLFLOW_RUN_FILE, run.info.run_id)
            mlflow.log_params({**train_config.model_dump(mode="json"), "preset": chosen["preset"],
                               "launcher": chosen["launcher"], "nproc_per_node": chosen["nproc_per_node"]})
            log_inputs(lineage, TRAINING_INPUTS)
        if chosen["launcher"] == "torchrun":
            history = train_with_torchrun(context, train_config, lay, out_dir, chosen["nproc_per_node"],
                                           storage.weights_folder())
        else:
            history = train_in_process(context, train_config, lay, out_dir, resuming, storage.weights_folder())
        best = out_dir / "checkpoints" / "best.pt"
        best = best if best.exists() else out_dir / "checkpoints" / "last.pt"
        checkpoint_sha = file_sha256(best)
        record = {"checkpoint": str(best), "checkpoint_sha256": checkpoint_sha, "mlflow_run_id": run.info.run_id,
                  "dagster_run_id": context.run.run_id, "train_config": train_config.model_dump(mode="json"),
                  "inputs": lineage}
        write_lineage(out_dir / "lineage.json", record)
        mlflow.log_artifact(str(out_dir / "lineage.json"))
        curves = curves_figure(history)
        if curves is not None:
            mlflow.log_figure(curves, "training_curves.png", save_kwargs={"bbox_inches": "tight", "dpi": 100})
        version = register_model(best, out_dir, checkpoint_sha, mlflow_tracking.registered_model_name)
        final = history[-1] if history else {}
        if final:
            mlflow.log_metrics({f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))})

    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(best)),
            "sha256": checkpoint_sha,
            "lineage_path": dg.MetadataValue.path(str(out_dir / "lineage.json")),
            "mlflow_run_id": run.info.run_id,
            "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(experiment_id, run.info.run_id)),
            "registered_model": f"{mlflow_tracking.registered_model_name} v{version}",
            "model_version": int(version),
            "model": train_config.model,
            "loss": train_config.loss,
            "epochs": len(history),
            "zero_shot_mean_auc": round(float(final.get("zero_shot_mean_auc", float("nan"))), 4),
            "val_loss": round(float(final.get("val_loss", float("nan"))), 4),
            **{f"input_digest_{asset}": digest for asset, digest in input_digests.items()},
            "curves": dg.MetadataValue.md(figure_markdown(curves, "training curves") if curves else "_no epochs_"),
            "history": dg.MetadataValue.json(history),
        },
    )


MLFLOW_RUN_FILE = "mlflow_run_id"


def mlflow_run_to_resume(out_dir: Path) -> str | None:
    """The MLflow run an interrupted training in `out_dir` logged to, if it still exists."""
    import mlflow

    path = out_dir / MLFLOW_RUN_FILE
    if not path.exists():
        return None
    run_id = path.read_text().strip()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:  # store reset or run deleted: start a new one
        return None
    return run_id


def train_in_process(context, train_config, lay, out_dir: Path, resuming: bool,
                     weights_dir: Path | None) -> list[dict]:
    from knowledge.base import load_knowledge
    from knowledge.ssm import SSM, ssm_targets_fn
    from knowledge.texts import zero_shot_prompts
    from tracking.training_runs import metrics_logger
    from training.loop import train

    callback = metrics_logger(context.log.info)
    prompts = zero_shot_prompts(load_knowledge(), lay.asset_dir("training_texts"))
    result = train(train_config, lay.asset_dir("cxr_images"), lay.asset_dir("training_texts"), out_dir,
                   ssm_targets_fn(SSM.load(lay.asset_dir("ssm"))), prompts=prompts,
                   resume=resuming, callback=callback, weights_dir=weights_dir)
    return result.history


def train_with_torchrun(context, train_config, lay, out_dir: Path, nproc: int, weights_dir: Path | None) -> list[dict]:
    """Launch `torchrun -m training` through Dagster Pipes: stdout/stderr stream into the run."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "train_config.json"
    write_text(config_path, train_config.model_dump_json(indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "training",
               "--config", str(config_path), "--images", str(lay.asset_dir("cxr_images")),
               "--texts", str(lay.asset_dir("training_texts")), "--ssm", str(lay.asset_dir("ssm")),
               "--out", str(out_dir), "--resume"] + (["--weights-dir", str(weights_dir)] if weights_dir else [])
    dg.PipesSubprocessClient().run(command=command, context=context).get_results()
    payload = torch.load(out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return list(payload.get("history", []))
