"""Image-text losses: MedFILIP's soft-target loss (SSM targets) and plain CLIP InfoNCE.

`logits[b, j] = scale * <image_b, text_j>` for unit-norm features; the paper's loss is
`MSE(logits, target) + BCEWithLogits(logits, target)` with `target` the SSM matrix [B, T].
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossMode = Literal["ssm_scaled", "ssm_cosine", "infonce"]
LOSS_MODES: tuple[str, ...] = ("ssm_scaled", "ssm_cosine", "infonce")


class MedFilipLoss(nn.Module):
    """`ssm_scaled` (the paper, default): MSE + BCE-with-logits on the scaled logits.
    `ssm_cosine`: the same two terms on the unscaled cosine similarities (the MSE then compares
    like with like, [-1, 1] against [0, 1]). `infonce`: symmetric cross-entropy with the diagonal
    as the positives (targets unused; needs as many texts as images)."""

    def __init__(self, mode: LossMode = "ssm_scaled"):
        super().__init__()
        if mode not in LOSS_MODES:
            raise ValueError(f"unknown loss mode {mode!r}; expected one of {LOSS_MODES}")
        self.mode = mode

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Computed in float32: under autocast the BCE/CE terms are unstable in half precision.
        similarity = image_features.float() @ text_features.float().T
        if self.mode == "infonce":
            return clip_infonce(logit_scale.float() * similarity)
        if targets is None:
            raise ValueError(f"loss mode {self.mode!r} needs SSM targets")
        logits = similarity if self.mode == "ssm_cosine" else logit_scale.float() * similarity
        return soft_target_loss(logits, targets.to(logits))


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE(logits, targets) + BCEWithLogits(logits, targets), both averaged over all pairs."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.mse_loss(logits, targets) + F.binary_cross_entropy_with_logits(logits, targets)


def clip_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy, image b's positive being text b."""
    if logits.shape[0] != logits.shape[1]:
        raise ValueError(f"InfoNCE needs one text per image, got logits {tuple(logits.shape)}")
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
