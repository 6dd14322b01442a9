"""The pre-training run's MLflow record: input datasets with digests, the registered model, curves,
and the folder fingerprint that lets an interrupted run resume. Plain mlflow, no Dagster."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping

from medfilip_model.mlflow_model import WEIGHTS_ARTIFACT, input_example, model_signature, save_weights
from tracking.digests import dataset_digest, entries_by_asset
from tracking.store import local_source

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


def input_digests(lineage: list[dict], assets: tuple[str, ...]) -> dict[str, str]:
    """The dataset digest of each of `assets` present in `lineage`."""
    by_asset = entries_by_asset(lineage)
    return {asset: dataset_digest(by_asset[asset]) for asset in assets if by_asset.get(asset)}


def log_inputs(lineage: list[dict], assets: tuple[str, ...], context: str = "training") -> dict[str, str]:
    """Each of `assets` as an MLflow dataset with its digest and location; returns the digests."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    by_asset = entries_by_asset(lineage)
    logged = {}
    for asset in assets:
        entries = by_asset.get(asset, [])
        if not entries:
            continue
        files = [f for e in entries for f in e.get("files", {})]
        source = local_source(str(Path(files[0]).parent) if files else asset)
        logged[asset] = dataset_digest(entries)
        mlflow.log_input(MetaDataset(source, name=asset, digest=logged[asset]), context=context)
    return logged


def register_model(checkpoint: Path, out_dir: Path, sha: str, registered_name: str) -> str:
    """Log the encoder as an MLflow pyfunc in the active run and register it; returns the version.

    Logged from code with a signature and an input example, and with `medfilip_model/` and `common/` as
    code paths: it loads wherever MLflow and torch are, no repository, trainer or pickle needed."""
    import mlflow

    import common
    import medfilip_model
    from medfilip_model import mlflow_model_code

    weights = save_weights(checkpoint, out_dir / "model_weights.pt")
    packages = [str(Path(package.__file__).parent) for package in (medfilip_model, common)]
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(mlflow_model_code.__file__)), artifacts={WEIGHTS_ARTIFACT: str(weights)},
        code_paths=packages, signature=model_signature(), input_example=input_example(),
        pip_requirements=["torch", "open_clip_torch", "transformers", "numpy", "pandas", "pillow", "pyyaml"],
        tags={"checkpoint_sha256": sha},
    )
    # Registered through the client: the fluent path prints its own "Successfully registered" lines.
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.get_registered_model(registered_name)
    except MlflowException:
        client.create_registered_model(registered_name)
    version = client.create_model_version(registered_name, source=info.model_uri, run_id=info.run_id,
                                          tags={"checkpoint_sha256": sha}, model_id=info.model_id)
    return str(version.version)


def run_fingerprint(train_config: dict, lineage: list[dict]) -> str:
    """Same config and same inputs -> same folder, so a crashed run resumes where it stopped."""
    inputs = sorted((e["asset"], e["partition"] or "", json.dumps(e["digests"], sort_keys=True, default=str))
                    for e in lineage)
    payload = json.dumps({"config": train_config, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def curves_figure(history: list[dict]):
    if not history:
        return None
    from common.plots import pyplot

    plt = pyplot()
    epochs = [h.get("epoch", i) for i, h in enumerate(history)]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    loss_ax.set_title("loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    auc_ax.plot(epochs, [h.get("zero_shot_mean_auc", float("nan")) for h in history], marker="o", color="#b5524a")
    auc_ax.set_title("zero-shot mean AUC (val)")
    auc_ax.set_xlabel("epoch")
    auc_ax.set_ylabel("mean AUC")
    fig.tight_layout()  # labels inside the canvas: MLflow saves the figure as drawn
    return fig
