"""Segmentation (SIIM pneumothorax): a small U-Net decoder on the pre-trained image encoder.

Encoder features: every open_clip image tower offers `forward_intermediates(..., output_fmt=
"NCHW")`; we keep the deepest map of each spatial size. CNN trunks (timm EfficientNet, ResNet)
so give a multi-scale pyramid (strides 2..32); a ViT gives its patch tokens reshaped to the
1/patch grid (one scale, the last block). The decoder climbs from the deepest map, upsampling
and concatenating each shallower map, and finally a full-resolution skip from a small conv stem
on the image itself, so a single-scale ViT still gets fine edges. That is robust across towers:
no per-architecture layer names.

The reference code loaded the pre-trained weights and then overwrote them when building the
segmentation net. Here the encoder is built first (with its weights loaded), the decoder is
added beside it, and nothing re-initialises the encoder; `encoder_lr_scale=0` (or
`freeze_encoder`) keeps it exactly as pre-trained. The tests compare tensors with the checkpoint.

Dice per image = 2|P∩G| / (|P|+|G|), with 1 when both are empty (the SIIM convention, so a
correct "no pneumothorax" counts); IoU likewise. Means over test images, with bootstrap CIs.
Under that rule a mask-free image scores 1 or 0: one false-positive pixel costs it all. On the
SIIM layout two thirds of the images are mask-free, so the mean over all images mostly counts
empty predictions. Every comparison is therefore also made on the images WITH a mask (how well
the pneumothorax is outlined) and on those WITHOUT (the share predicted empty) apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.compare import PairedSeed, mean_value_statistic, paired_comparison
from evaluation.datasets import LabelledImages
from evaluation.encode import as_float, image_tensor, predict_probabilities
from evaluation.finetune import ImageEncoder, Init, available_inits, build_encoder, freeze_batchnorm
from evaluation.splits import patient_split


@dataclass(frozen=True)
class SegmentationConfig:
    epochs: int = 5
    lr: float = 1e-3
    encoder_lr_scale: float = 0.1
    freeze_encoder: bool = False
    encoder_bn: Literal["train", "frozen"] = "train"  # as FinetuneConfig.encoder_bn
    batch_size: int = 8
    decoder_width: int = 32
    threshold: float = 0.5
    seed: int = 0
    device: str | None = None


class UNetOnEncoder(nn.Module):
    """Pre-trained encoder + U-Net decoder; logits [B, 1, H, W] at the input's resolution."""

    def __init__(self, encoder: ImageEncoder, width: int = 32):
        super().__init__()
        self.encoder = encoder
        size = encoder.image_size
        was_training = encoder.training
        encoder.eval()  # a probe in train mode would move the pre-trained BatchNorm statistics
        with torch.no_grad():
            probe = self.encoder_maps(torch.zeros(1, 1, size, size))
        encoder.train(was_training)
        channels = [m.shape[1] for m in probe]  # shallow -> deep
        self.stem = _conv_block(1, width)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.up = nn.ModuleList(_conv_block(2 * width, width) for _ in range(len(channels)))
        self.out = nn.Conv2d(width, 1, 1)

    def encoder_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The deepest feature map of each spatial size, from shallow to deep."""
        result = self.encoder.visual.forward_intermediates(
            self.encoder.normalise(images), intermediates_only=True, output_fmt="NCHW")
        by_size: dict[tuple[int, int], torch.Tensor] = {}
        for feature in result["image_intermediates"]:
            by_size[tuple(feature.shape[-2:])] = feature  # later = deeper at this size
        return sorted(by_size.values(), key=lambda f: -f.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.encoder_maps(images)
        x = self.lateral[-1](maps[-1])
        skips = [lat(m) for lat, m in zip(self.lateral[:-1], maps[:-1])][::-1] + [self.stem(images)]
        for block, skip in zip(self.up, skips):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


def build_segmenter(init: Init, model_config: str | dict, checkpoint: str | os.PathLike | None = None,
                    width: int = 32, weights_dir: Path | None = None) -> UNetOnEncoder:
    return UNetOnEncoder(build_encoder(init, model_config, checkpoint, weights_dir), width)


def run_segmentation(
    data: LabelledImages,
    model_config: str | dict,
    checkpoint: str | os.PathLike | None,
    *,
    inits: Sequence[Init] | None = None,
    config: SegmentationConfig = SegmentationConfig(),
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    n_boot: int = 1000,
    seeds: Sequence[int] | None = None,
    weights_dir: Path | None = None,
) -> dict:
    """Per seed (its own split, decoder init and random encoder) one U-Net per init trained on
    TRAIN, Dice/IoU on TEST (val is held for the caller's model selection and is not used for the
    numbers); "arms" are mean/sd over seeds, "comparisons" pre-trained vs each baseline, paired on
    each seed's test images (evaluation.compare)."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inits = [i for i in (inits or available_inits(model_config)) if i != "pretrained" or checkpoint is not None]
    seeds = list(seeds) if seeds is not None else [config.seed]
    size = build_encoder("random", model_config).image_size
    images = image_tensor(data, size)
    masks = torch.from_numpy(np.stack([data.mask(i, size) for i in range(len(data))]))[:, None]
    runs, splits = [], {}
    dice_by_init: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        split = patient_split(data.labels, data.patient_ids, split_fractions, seed=seed)
        splits[str(seed)] = {k: int(len(v)) for k, v in split.items()}
        for init in inits:
            torch.manual_seed(seed)  # the random encoder and the decoder are drawn from the seed
            net = build_segmenter(init, model_config, checkpoint, config.decoder_width, weights_dir).to(device)
            train_segmenter(net, images[split["train"]], masks[split["train"]], seeded, device)
            predicted = predict_masks(net, images[split["test"]], device) >= config.threshold
            truth = masks[split["test"]].numpy().astype(bool)
            dice, iou = dice_iou(predicted, truth)
            with_mask = truth.reshape(len(truth), -1).any(axis=1)
            runs.append({"seed": seed, "init": init, **summarise(dice, iou, n_boot, seed, with_mask)})
            dice_by_init.setdefault(init, []).append((seed, dice, with_mask))
    return {"dataset": data.name, "seeds": seeds, "splits": splits, "image_size": size,
            "empty_mask_rule": "Dice = IoU = 1 when prediction and truth are both empty", "runs": runs,
            "arms": _arms(runs), "comparisons": _comparisons(dice_by_init, n_boot)}


def _arms(runs: list[dict]) -> list[dict]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["init"], []).append(run)
    arms = []
    for init, group in grouped.items():
        arm = {"init": init}
        for metric in ("mean_dice", "mean_iou", *SUBSET_METRICS):
            values = [r[metric] for r in group]
            arm[metric] = float(np.mean(values))
            arm[f"{metric}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            arm[f"{metric}_per_seed"] = values
        arms.append(arm)
    return arms


# subset -> (which test images, metric name); "all" is the headline SIIM mean Dice.
SUBSETS = {
    "all": (lambda with_mask: np.ones_like(with_mask), "mean Dice (test)"),
    "with_mask": (lambda with_mask: with_mask, "mean Dice on test images with a mask"),
    "without_mask": (lambda with_mask: ~with_mask, "share of mask-free test images predicted empty"),
}
SUBSET_METRICS = ("mean_dice_with_mask", "empty_predicted_without_mask")


def _comparisons(dice_by_init: dict[str, list[tuple[int, np.ndarray, np.ndarray]]], n_boot: int) -> list[dict]:
    """Pre-trained against each baseline, paired on each seed's test images: on all of them and
    on those with / without a mask apart (a subset empty in some seed is left out)."""
    if "pretrained" not in dice_by_init:
        return []
    candidate = dice_by_init["pretrained"]
    comparisons = []
    for baseline_init, baseline in dice_by_init.items():
        if baseline_init == "pretrained":
            continue
        for subset, (select, metric) in SUBSETS.items():
            pairs = []
            for (seed, cand, with_mask), (_, base, _) in zip(candidate, baseline):
                rows = select(with_mask).astype(bool)
                if rows.any():
                    pairs.append(PairedSeed(seed, cand[rows], base[rows]))
            if len(pairs) < len(candidate):
                continue
            result = paired_comparison(pairs, mean_value_statistic, n_boot=n_boot, seed=pairs[0].seed)
            comparisons.append({"candidate_init": "pretrained", "baseline_init": baseline_init, "subset": subset,
                                "metric": metric, **result})
    return comparisons


def train_segmenter(net: UNetOnEncoder, images: torch.Tensor, masks: torch.Tensor, config: SegmentationConfig,
                    device: torch.device) -> None:
    """BCE + soft Dice; the encoder trains at lr * encoder_lr_scale, or not at all when frozen."""
    torch.manual_seed(config.seed)
    encoder_params = list(net.encoder.parameters())
    if config.freeze_encoder:
        for param in encoder_params:
            param.requires_grad_(False)
    decoder_params = [p for n, p in net.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": decoder_params, "lr": config.lr}]
    if not config.freeze_encoder:
        groups.append({"params": encoder_params, "lr": config.lr * config.encoder_lr_scale})
    optimiser = torch.optim.AdamW(groups, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(config.seed)
    net.train()
    if config.freeze_encoder:
        net.encoder.eval()  # frozen BatchNorm statistics stay the pre-trained ones
    elif config.encoder_bn == "frozen":
        freeze_batchnorm(net.encoder)
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2 and len(order) >= 2:
                continue
            logits = net(as_float(images[batch], device))
            target = masks[batch].to(device).float()
            loss = F.binary_cross_entropy_with_logits(logits, target) + _soft_dice_loss(logits, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    net.eval()


def predict_masks(net: UNetOnEncoder, images: torch.Tensor, device: torch.device, batch: int = 32) -> np.ndarray:
    return predict_probabilities(net, images, device, batch, (0, *images.shape[1:]))


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks [N, ...]; both 1 where both masks are empty."""
    p = predicted.reshape(len(predicted), -1).astype(bool)
    t = truth.reshape(len(truth), -1).astype(bool)
    inter = (p & t).sum(1)
    total = p.sum(1) + t.sum(1)
    union = (p | t).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2 * inter / total, 1.0)
        iou = np.where(union > 0, inter / union, 1.0)
    return dice, iou


def summarise(dice: np.ndarray, iou: np.ndarray, n_boot: int, seed: int, with_mask: np.ndarray | None = None) -> dict:
    """Means with bootstrap CIs; with `with_mask` (per test image) also the mean Dice of the images
    with a mask and, for the mask-free ones, the share predicted empty (their Dice is 1 or 0)."""
    rows = np.random.default_rng(seed).integers(0, len(dice), size=(n_boot, len(dice))) if len(dice) else None
    ci = lambda v: tuple(float(q) for q in np.quantile(v[rows].mean(1), [0.025, 0.975])) if rows is not None else (  # noqa: E731
        float("nan"), float("nan"))
    mean = lambda v: float(v.mean()) if len(v) else float("nan")  # noqa: E731
    out = {"mean_dice": mean(dice), "mean_dice_ci": ci(dice), "mean_iou": mean(iou), "mean_iou_ci": ci(iou),
           "dice_per_image": dice.tolist(), "test_images": int(len(dice))}
    if with_mask is not None:
        out.update(mean_dice_with_mask=mean(dice[with_mask]), empty_predicted_without_mask=mean(dice[~with_mask]),
                   test_images_with_mask=int(with_mask.sum()))
    return out


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    probs = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    return (1 - (2 * (probs * target).sum(1) + eps) / (probs.sum(1) + target.sum(1) + eps)).mean()


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
