"""The pre-training run's MLflow record: input datasets with digests, the registered model, curves,
and the folder fingerprint that lets an interrupted run resume. Plain mlflow, no Dagster."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping

from training.mlflow_model import WEIGHTS_ARTIFACT, MedFilipEncoder, save_weights


def metrics_logger(log: Callable[[str], None] | None = None) -> Callable[[str, int, Mapping], None]:
    """A training callback that logs every numeric metric to the active MLflow run, and one line
    per epoch through `log`."""
    import mlflow

    def callback(kind: str, step: int, metrics: Mapping) -> None:
        numbers = {k.replace("/", "_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(numbers, step=step)
        if kind == "epoch" and log is not None:
            log(f"epoch {int(metrics.get('epoch', 0))}: val_loss {metrics.get('val_loss', float('nan')):.4f}, "
                f"zero-shot mean AUC {metrics.get('zero_shot_mean_auc', float('nan')):.3f}")

    return callback


def log_inputs(lineage: list[dict]) -> None:
    """Each input asset as an MLflow dataset: its files' digest and where they are."""
    import mlflow
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


def register_model(checkpoint: Path, out_dir: Path, sha: str, registered_name: str) -> str:
    """Log the encoder as an MLflow pyfunc in the active run and register it; returns the version."""
    import mlflow

    weights = save_weights(checkpoint, out_dir / "model_weights.pt")
    info = mlflow.pyfunc.log_model(
        name="model", python_model=MedFilipEncoder(), artifacts={WEIGHTS_ARTIFACT: str(weights)},
        pip_requirements=["torch", "open_clip_torch", "transformers", "numpy", "pandas"],
        registered_model_name=registered_name, tags={"checkpoint_sha256": sha},
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
