"""`pretrained_model`: MedFILIP pre-training from cxr_images + training_texts + ssm, as an
MLflow run with its inputs' digests, the checkpoint file (sha256 in metadata) and a
registered model version. Small runs train in process; GPU boxes launch `torchrun` through
Dagster Pipes. The step declares pool "gpu" so two trainings never share a GPU by accident.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow.parquet as pq

from assets.plots import figure_markdown
from pipeline.lineage import MODEL_ANCESTORS, collect_lineage, write_lineage
from pipeline.resources import MLflowResource, StorageResource
from pipeline.storage import file_sha256


class PretrainConfig(dg.Config):
    preset: str = "demo"  # training.loop.PRESETS: demo (CPU minutes) or paper
    overrides_json: str = "{}"  # TrainConfig fields, e.g. {"epochs": 5, "loss": "infonce"}
    launcher: Literal["in_process", "torchrun"] = "in_process"
    nproc_per_node: int = 1
    fresh: bool = False  # start over instead of resuming an interrupted run with the same inputs


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

    from training.loop import PRESETS, TrainConfig

    lay = storage.layout()
    train_config = TrainConfig.model_validate({**PRESETS[config.preset], **json.loads(config.overrides_json)})
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
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"pretrain-{fingerprint[:8]}", tags=tags) as run:
        mlflow.log_params({**train_config.model_dump(mode="json"), "preset": config.preset,
                           "launcher": config.launcher, "nproc_per_node": config.nproc_per_node})
        log_inputs(mlflow, lineage)
        if config.launcher == "torchrun":
            history = train_with_torchrun(context, train_config, lay, out_dir, config.nproc_per_node)
        else:
            history = train_in_process(context, mlflow, train_config, lay, out_dir, resuming)
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
            mlflow.log_figure(curves, "training_curves.png")
        version = register_model(mlflow, mlflow_tracking, best, out_dir, checkpoint_sha)
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
            "zero_shot_mean_auc": float(final.get("zero_shot_mean_auc", float("nan"))),
            "val_loss": float(final.get("val_loss", float("nan"))),
            "curves": dg.MetadataValue.md(figure_markdown(curves, "training curves") if curves else "_no epochs_"),
            "history": dg.MetadataValue.json(history),
        },
    )


def train_in_process(context, mlflow, train_config, lay, out_dir: Path, resuming: bool) -> list[dict]:
    from functools import partial

    from training.loop import train
    from training.ssm import SSM, batch_targets

    ssm_table = SSM.load(lay.asset_dir("ssm"))

    def targets(image_text_ids, column_text_ids):
        return batch_targets(image_text_ids, ssm_table, column_text_ids)

    def callback(kind: str, step: int, metrics) -> None:
        numbers = {k.replace("/", "_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(numbers, step=step)
        if kind == "epoch":
            context.log.info(f"epoch {int(metrics.get('epoch', 0))}: val_loss {metrics.get('val_loss', float('nan')):.4f}, "
                             f"zero-shot mean AUC {metrics.get('zero_shot_mean_auc', float('nan')):.3f}")

    result = train(train_config, lay.asset_dir("cxr_images"), lay.asset_dir("training_texts"), out_dir,
                   partial(targets), prompts=zero_shot_prompts(lay.asset_dir("training_texts")),
                   resume=resuming, callback=callback)
    return result.history


def train_with_torchrun(context, train_config, lay, out_dir: Path, nproc: int) -> list[dict]:
    """Launch `torchrun -m training` through Dagster Pipes: stdout/stderr stream into the run."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "train_config.json"
    config_path.write_text(train_config.model_dump_json(indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "training",
               "--config", str(config_path), "--images", str(lay.asset_dir("cxr_images")),
               "--texts", str(lay.asset_dir("training_texts")), "--ssm", str(lay.asset_dir("ssm")),
               "--out", str(out_dir), "--resume"]
    dg.PipesSubprocessClient().run(command=command, context=context).get_results()
    payload = torch.load(out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return list(payload.get("history", []))


def zero_shot_prompts(texts_dir: Path) -> dict[str, str]:
    """"<category>. <description>" for every category the training texts use."""
    from training.knowledge import load_knowledge

    kb = load_knowledge()
    categories = set(pq.read_table(texts_dir / "texts.parquet", columns=["category"]).column("category").to_pylist())
    return {c: f"{c}. {kb.description(c)}" for c in sorted(categories) if c in kb.categories}


def log_inputs(mlflow, lineage: list[dict]) -> None:
    """Each input asset as an MLflow dataset: its files' digest and where they are."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    by_asset: dict[str, list[dict]] = {}
    for entry in lineage:
        by_asset.setdefault(entry["asset"], []).append(entry)
    for asset in ("cxr_images", "training_texts", "ssm"):
        entries = by_asset.get(asset, [])
        digest = hashlib.sha256(json.dumps([e["digests"] for e in entries], sort_keys=True, default=str).encode())
        files = [f for e in entries for f in e.get("files", {})]
        source = resolve_dataset_source(str(Path(files[0]).parent) if files else asset)
        mlflow.log_input(MetaDataset(source, name=asset, digest=digest.hexdigest()[:16]), context="training")


def register_model(mlflow, tracking: MLflowResource, checkpoint: Path, out_dir: Path, sha: str) -> str:
    from training.mlflow_model import WEIGHTS_ARTIFACT, MedFilipEncoder, save_weights

    weights = save_weights(checkpoint, out_dir / "model_weights.pt")
    info = mlflow.pyfunc.log_model(
        name="model", python_model=MedFilipEncoder(), artifacts={WEIGHTS_ARTIFACT: str(weights)},
        pip_requirements=["torch", "open_clip_torch", "transformers", "numpy", "pandas"],
        registered_model_name=tracking.registered_model_name, tags={"checkpoint_sha256": sha},
    )
    return str(info.registered_model_version)


def run_fingerprint(train_config: dict, lineage: list[dict]) -> str:
    """Same config and same inputs -> same folder, so a crashed run resumes where it stopped."""
    inputs = sorted((e["asset"], e["partition"] or "", json.dumps(e["digests"], sort_keys=True, default=str))
                    for e in lineage)
    payload = json.dumps({"config": train_config, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def curves_figure(history: list[dict]):
    if not history:
        return None
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(8, 3))
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    auc_ax.plot(epochs, [h.get("zero_shot_mean_auc", float("nan")) for h in history], marker="o", color="#b5524a")
    auc_ax.set_title("zero-shot mean AUC (val)")
    auc_ax.set_xlabel("epoch")
    return fig
