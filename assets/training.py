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

from assets.plots import figure_markdown
from common.storage import file_sha256, write_text
from pipeline.lineage import MODEL_ANCESTORS, collect_lineage, write_lineage
from pipeline.resources import MLflowResource, StorageResource


class PretrainConfig(dg.Config):
    """Empty / unset fields take `training:` of medfilip.yaml (or MEDFILIP_TRAINING_*), then the defaults."""

    preset: str = ""  # training.config.PRESETS: demo (CPU minutes), paper or reference (the published code); default demo
    overrides_json: str = ""  # TrainConfig fields, e.g. {"epochs": 5, "loss": "infonce"}; on top of the file's
    launcher: str = ""  # in_process (default) or torchrun
    nproc_per_node: int = 0  # default 1
    fresh: bool = False  # start over instead of resuming an interrupted run with the same inputs


def resolved_training(config: PretrainConfig) -> dict:
    """The run config merged onto the settings file: preset, overrides, launcher, nproc_per_node."""
    from pipeline.config_file import section

    file = section("training")
    overrides = {**file.get("overrides", {}), **json.loads(config.overrides_json or "{}")}
    return {"preset": config.preset or file.get("preset", "demo"), "overrides": overrides,
            "launcher": config.launcher or file.get("launcher", "in_process"),
            "nproc_per_node": config.nproc_per_node or file.get("nproc_per_node", 1)}


@dg.asset(
    deps=["cxr_images", "training_texts", "ssm"],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="gpu",
    code_version="1",
)
def pretrained_model(
    context: dg.AssetExecutionContext, config: PretrainConfig, storage: StorageResource, mlflow_tracking: MLflowResource
) -> dg.MaterializeResult:
    """The pre-trained dual encoder: checkpoint file + sha256, MLflow run id and model version."""
    import mlflow

    from training.config import PRESETS, TrainConfig
    from training.tracking import curves_figure, input_digests as digests_of, log_inputs, register_model, run_fingerprint

    lay = storage.layout()
    chosen = resolved_training(config)
    if chosen["launcher"] not in ("in_process", "torchrun"):
        raise dg.Failure(f"launcher {chosen['launcher']!r} is unknown: use in_process or torchrun")
    if chosen["preset"] not in PRESETS:
        raise dg.Failure(f"training preset {chosen['preset']!r} is unknown: use one of {', '.join(PRESETS)}")
    train_config = TrainConfig.model_validate({**PRESETS[chosen["preset"]], **chosen["overrides"]})
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
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
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
        input_digests = digests_of(lineage)
        if previous:
            context.log.info(f"continuing MLflow run {previous}")
        else:
            write_text(out_dir / MLFLOW_RUN_FILE, run.info.run_id)
            mlflow.log_params({**train_config.model_dump(mode="json"), "preset": chosen["preset"],
                               "launcher": chosen["launcher"], "nproc_per_node": chosen["nproc_per_node"]})
            log_inputs(lineage)
        if chosen["launcher"] == "torchrun":
            history = train_with_torchrun(context, train_config, lay, out_dir, chosen["nproc_per_node"])
        else:
            history = train_in_process(context, train_config, lay, out_dir, resuming)
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


def train_in_process(context, train_config, lay, out_dir: Path, resuming: bool) -> list[dict]:
    from training.knowledge import load_knowledge
    from training.loop import train
    from training.ssm import SSM, ssm_targets_fn
    from training.texts import zero_shot_prompts
    from training.tracking import metrics_logger

    callback = metrics_logger(context.log.info)

    result = train(train_config, lay.asset_dir("cxr_images"), lay.asset_dir("training_texts"), out_dir,
                   ssm_targets_fn(SSM.load(lay.asset_dir("ssm"))), prompts=zero_shot_prompts(load_knowledge(), lay.asset_dir("training_texts")),
                   resume=resuming, callback=callback)
    return result.history


def train_with_torchrun(context, train_config, lay, out_dir: Path, nproc: int) -> list[dict]:
    """Launch `torchrun -m training` through Dagster Pipes: stdout/stderr stream into the run."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "train_config.json"
    write_text(config_path, train_config.model_dump_json(indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "training",
               "--config", str(config_path), "--images", str(lay.asset_dir("cxr_images")),
               "--texts", str(lay.asset_dir("training_texts")), "--ssm", str(lay.asset_dir("ssm")),
               "--out", str(out_dir), "--resume"]
    dg.PipesSubprocessClient().run(command=command, context=context).get_results()
    payload = torch.load(out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return list(payload.get("history", []))
