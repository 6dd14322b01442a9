"""Fine-tuning the pre-trained image encoder on labelled data: linear probe and full fine-tuning
with 1% / 10% / 100% of the training labels, against the same architecture from random init
(and from ImageNet weights where the config has local ones).

The reference code's fine-tuning built the classifier and never loaded the pre-trained weights,
so "pre-trained" and "random" were the same experiment. Here `build_encoder("pretrained", ...)`
loads the checkpoint through medfilip_model.dual_encoder.create_model and the tests check that the encoder's
tensors equal the checkpoint's before any training step.

Protocol, per seed (>= 3 for a claim): a patient-wise stratified train/val/test split of the
set; the label fraction subsamples TRAIN only (stratified, nested); thresholds come from VAL;
all reported numbers are on TEST with bootstrap CIs (evaluation.metrics.classification_report).
The random baseline's weights are drawn from the seed too. Pre-trained vs each baseline is a
paired comparison on each seed's test images (evaluation.compare): mean and sd over seeds, a
bootstrap 95% interval of the difference, and a verdict from that interval.

Full fine-tuning starts from the linear probe's head (LP-FT, Kumar et al. 2022): with a random
head the first, largest gradients reach the encoder before the head means anything and wash the
pre-trained features out, which is how full fine-tuning came out below the probe it contains.
Defaults are tiny so that the tests run in seconds on a CPU; raise epochs for real numbers.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from evaluation.compare import PairedSeed, evaluable_columns, mean_auc_statistic, paired_comparison
from evaluation.datasets import LabelledImages
from evaluation.encode import as_float, image_tensor, predict_probabilities, without_tower_weights
from evaluation.metrics import classification_report
from evaluation.splits import label_fraction, patient_split
from medfilip_model.dual_encoder import MedFilipModel, create_model, load_config

Init = Literal["pretrained", "random", "imagenet"]
Mode = Literal["linear", "full"]


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 5  # full fine-tuning epochs
    probe_steps: int = 200  # linear probe: full-batch optimiser steps on frozen features
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1  # full fine-tuning: the pre-trained encoder moves slower than the head
    full_from_probe: bool = True  # full fine-tuning starts from the linear probe's head (LP-FT)
    # "frozen": the encoder's BatchNorm layers keep their pre-trained running statistics while
    # its weights train; "train": they re-estimate them from the fine-tuning batches.
    encoder_bn: Literal["train", "frozen"] = "train"
    weight_decay: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    device: str | None = None


class ImageEncoder(nn.Module):
    """The image tower of a MedFilipModel (normalisation included), features before the L2 norm."""

    def __init__(self, model: MedFilipModel):
        super().__init__()
        self.visual = model.clip.visual
        self.register_buffer("image_mean", model.image_mean.clone(), persistent=False)
        self.register_buffer("image_std", model.image_std.clone(), persistent=False)
        self.image_size = model.image_size
        self.out_dim = int(model.config["embed_dim"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(self.normalise(images))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.image_mean) / self.image_std


class Classifier(nn.Module):
    def __init__(self, encoder: ImageEncoder, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def available_inits(model_config: str | dict) -> list[str]:
    """pretrained and random always; imagenet where the config names local image weights."""
    config = model_config if isinstance(model_config, dict) else load_config(model_config)
    return ["pretrained", "random"] + (["imagenet"] if config.get("image_weights") else [])


def build_encoder(init: Init, model_config: str | dict, checkpoint: str | os.PathLike | None = None,
                  weights_dir: Path | None = None) -> ImageEncoder:
    """The image encoder with the chosen initialisation; "pretrained" needs `checkpoint`, "imagenet"
    reads the config's image weights (relative names under `weights_dir`)."""
    config = copy.deepcopy(model_config if isinstance(model_config, dict) else load_config(model_config))
    if init == "pretrained":
        if checkpoint is None:
            raise ValueError("init='pretrained' needs a checkpoint")
        return ImageEncoder(create_model(without_tower_weights(config), pretrained=checkpoint))
    if init == "imagenet":
        if not config.get("image_weights"):
            raise ValueError("init='imagenet' needs a config with local image_weights")
        return ImageEncoder(create_model(config, weights_dir=weights_dir))
    if init == "random":
        config.pop("image_weights", None)  # random really means random, not ImageNet
        return ImageEncoder(create_model(config))
    raise ValueError(f"unknown init {init!r}")


def run_finetune(
    data: LabelledImages,
    model_config: str | dict,
    checkpoint: str | os.PathLike | None,
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    modes: Sequence[Mode] = ("linear", "full"),
    inits: Sequence[Init] | None = None,
    config: FinetuneConfig = FinetuneConfig(),
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    n_boot: int = 1000,
    images: torch.Tensor | None = None,
    seeds: Sequence[int] | None = None,
    weights_dir: Path | None = None,
) -> dict:
    """Every (seed, mode, init, fraction); per seed its own split, label subset, head and random
    init. {"seeds", "splits": {seed: sizes}, "runs": [{"seed", "mode", "init", "fraction",
    "train_images", "report"}], "arms": mean/sd over seeds, "comparisons": pre-trained vs each
    baseline per (mode, fraction) with a paired bootstrap interval (evaluation.compare), "protocol"}.
    `weights_dir`: where the ImageNet baseline's relative weight file names are looked up."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inits = list(inits or available_inits(model_config))
    if checkpoint is None and "pretrained" in inits:
        inits.remove("pretrained")
    seeds = list(seeds) if seeds is not None else [config.seed]
    if images is None:
        size = build_encoder("random", model_config).image_size
        images = image_tensor(data, size)
    targets = torch.as_tensor(data.labels, dtype=torch.float32)
    runs, splits = [], {}
    scored: dict[tuple[str, float, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        split = patient_split(data.labels, data.patient_ids, split_fractions, seed=seed)
        splits[str(seed)] = {k: int(len(v)) for k, v in split.items()}
        subsets = {f: label_fraction(data.labels, f, seed=seed, indices=split["train"]) for f in fractions}
        for init in inits:
            torch.manual_seed(seed)  # the random baseline's weights are part of what a seed varies
            encoder = build_encoder(init, model_config, checkpoint, weights_dir).to(device)
            features = _features(encoder, images, device)
            for fraction, train_rows in subsets.items():
                head = nn.Linear(encoder.out_dim, targets.shape[1]).to(device)
                _train_probe(head, features[train_rows], targets[train_rows].to(device), seeded)
                for mode in modes:
                    val_scores, test_scores = _fit_mode(mode, encoder, head, features, images, targets, train_rows,
                                                        split, seeded, device)
                    report = classification_report(data.labels[split["val"]], val_scores, data.labels[split["test"]],
                                                   test_scores, data.categories, n_boot=n_boot, seed=seed)
                    runs.append({"seed": seed, "mode": mode, "init": init, "fraction": fraction,
                                 "train_images": int(len(train_rows)), "report": report})
                    scored.setdefault((mode, fraction, init), []).append(
                        (seed, data.labels[split["test"]], test_scores))
    return {"dataset": data.name, "seeds": seeds, "splits": splits, "runs": runs,
            "arms": _arms(runs), "comparisons": _comparisons(scored, modes, fractions, inits, n_boot),
            "protocol": "per seed: patient-wise split, label fraction of train only, probe/fine-tune seed; "
                        "thresholds on val; metrics on test; pre-trained vs baseline paired on each seed's test images"}


def fit_and_score(encoder: ImageEncoder, images: torch.Tensor, labels: np.ndarray, train_rows: np.ndarray,
                  val_rows: np.ndarray, test_rows: np.ndarray, mode: Mode, config: FinetuneConfig,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Trains a linear head (frozen encoder) or, from that head, the whole classifier; sigmoid
    scores on val/test."""
    torch.manual_seed(config.seed)
    encoder = encoder.to(device)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    features = _features(encoder, images, device)
    head = nn.Linear(encoder.out_dim, labels.shape[1]).to(device)
    _train_probe(head, features[train_rows], targets[train_rows].to(device), config)
    return _fit_mode(mode, encoder, head, features, images, targets, train_rows,
                     {"val": val_rows, "test": test_rows}, config, device)


def _fit_mode(mode: Mode, encoder: ImageEncoder, probe_head: nn.Linear, features: torch.Tensor,
              images: torch.Tensor, targets: torch.Tensor, train_rows: np.ndarray, split: dict,
              config: FinetuneConfig, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    if mode == "linear":
        with torch.no_grad():
            scores = torch.sigmoid(probe_head(features)).cpu().numpy()
        return scores[split["val"]], scores[split["test"]]
    if mode != "full":
        raise ValueError(f"unknown mode {mode!r}")
    torch.manual_seed(config.seed)
    classifier = Classifier(copy.deepcopy(encoder), targets.shape[1]).to(device)
    if config.full_from_probe:
        # LP-FT: a random head's first gradients would scramble the pre-trained features before
        # the head is any good; starting from the probe's head keeps them.
        classifier.head.load_state_dict(probe_head.state_dict())
    _train_full(classifier, images, targets, train_rows, config, device)
    return _predict(classifier, images[split["val"]], device), _predict(classifier, images[split["test"]], device)


def _arms(runs: list[dict]) -> list[dict]:
    """Mean AUC per (mode, init, fraction): mean and sample sd over seeds."""
    grouped: dict[tuple, list[float]] = {}
    for run in runs:
        grouped.setdefault((run["mode"], run["init"], run["fraction"]), []).append(run["report"]["mean_auc"])
    return [{"mode": mode, "init": init, "fraction": fraction, "mean_auc": float(np.mean(values)),
             "mean_auc_sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
             "per_seed": values}
            for (mode, init, fraction), values in grouped.items()]


def _comparisons(scored: dict, modes: Sequence[str], fractions: Sequence[float], inits: Sequence[str],
                 n_boot: int) -> list[dict]:
    """Pre-trained against each other init, per (mode, fraction), on the classes evaluable on each
    seed's test split."""
    if "pretrained" not in inits:
        return []
    comparisons = []
    for mode in modes:
        for fraction in fractions:
            candidate = scored[(mode, fraction, "pretrained")]
            for baseline_init in (i for i in inits if i != "pretrained"):
                baseline = scored[(mode, fraction, baseline_init)]
                pairs = []
                for (seed, labels, cand), (_, _, base) in zip(candidate, baseline):
                    columns = evaluable_columns(labels)
                    if len(columns):
                        pairs.append(PairedSeed(seed, cand[:, columns], base[:, columns], truth=labels[:, columns]))
                if not pairs:
                    continue
                result = paired_comparison(pairs, mean_auc_statistic, n_boot=n_boot, seed=pairs[0].seed)
                comparisons.append({"mode": mode, "fraction": fraction, "candidate_init": "pretrained",
                                    "baseline_init": baseline_init, "metric": "mean AUC (test)", **result})
    return comparisons


# --- helpers -------------------------------------------------------------------------------


@torch.no_grad()
def _features(encoder: ImageEncoder, images: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(as_float(images[i : i + batch], device)) for i in range(0, len(images), batch)])


def _train_probe(head: nn.Linear, features: torch.Tensor, targets: torch.Tensor, config: FinetuneConfig) -> None:
    # Features are standardised by the train rows' statistics folded into the head afterwards,
    # so one learning rate suits encoders whose feature scales differ.
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6) if len(features) > 1 else torch.ones_like(features[0])
    scaled = (features - mean) / std
    inner = nn.Linear(features.shape[1], targets.shape[1]).to(features.device)
    optimiser = torch.optim.AdamW(inner.parameters(), lr=10 * config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(config.probe_steps):
        optimiser.zero_grad(set_to_none=True)
        loss_fn(inner(scaled), targets).backward()
        optimiser.step()
    with torch.no_grad():
        head.weight.copy_(inner.weight / std)
        head.bias.copy_(inner.bias - (inner.weight * (mean / std)).sum(dim=1))


def _train_full(classifier: Classifier, images: torch.Tensor, targets: torch.Tensor, train_rows: np.ndarray,
                config: FinetuneConfig, device: torch.device) -> None:
    optimiser = torch.optim.AdamW([
        {"params": classifier.encoder.parameters(), "lr": config.lr * config.encoder_lr_scale},
        {"params": classifier.head.parameters(), "lr": config.lr},
    ], weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(config.seed)
    classifier.train()
    if config.encoder_bn == "frozen":
        freeze_batchnorm(classifier.encoder)
    rows = torch.as_tensor(train_rows)
    for _ in range(config.epochs):
        order = rows[torch.randperm(len(rows), generator=generator)]
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2 and len(order) >= 2:
                continue  # a single-image batch breaks BatchNorm in CNN trunks
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(classifier(as_float(images[batch], device)), targets[batch].to(device))
            loss.backward()
            optimiser.step()
    classifier.eval()


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers to eval mode: they normalise with their stored statistics and stop
    updating them (their affine weights still train)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


def _predict(classifier: Classifier, images: torch.Tensor, device: torch.device, batch: int = 64) -> np.ndarray:
    return predict_probabilities(classifier, images, device, batch, (0, classifier.head.out_features))
