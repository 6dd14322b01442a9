"""Loss functions against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from training.loss import MedFilipLoss


def _bce(x: float, t: float) -> float:
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # cosines: [[0.6, 1.0], [0.8, 0.0]]
TARGETS = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
COSINES = [[0.6, 1.0], [0.8, 0.0]]


def test_paper_loss_is_mse_plus_bce_on_scaled_logits():
    scale = torch.tensor(2.0)
    logits = [[2 * c for c in row] for row in COSINES]
    pairs = [(logits[i][j], float(TARGETS[i, j])) for i in range(2) for j in range(2)]
    expected = sum((x - t) ** 2 for x, t in pairs) / 4 + sum(_bce(x, t) for x, t in pairs) / 4
    got = MedFilipLoss("ssm_scaled")(IMAGES, TEXTS, scale, TARGETS)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_cosine_variant_ignores_the_scale():
    pairs = [(COSINES[i][j], float(TARGETS[i, j])) for i in range(2) for j in range(2)]
    expected = sum((x - t) ** 2 for x, t in pairs) / 4 + sum(_bce(x, t) for x, t in pairs) / 4
    loss = MedFilipLoss("ssm_cosine")
    assert loss(IMAGES, TEXTS, torch.tensor(50.0), TARGETS).item() == pytest.approx(expected, rel=1e-6)
    assert loss(IMAGES, TEXTS, torch.tensor(1.0), TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_is_symmetric_cross_entropy_on_the_diagonal():
    scale = 3.0
    logits = [[scale * c for c in row] for row in COSINES]
    rows = [-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(2)]
    cols = [-logits[j][j] + math.log(sum(math.exp(logits[i][j]) for i in range(2))) for j in range(2)]
    expected = (sum(rows) / 2 + sum(cols) / 2) / 2
    assert MedFilipLoss("infonce")(IMAGES, TEXTS, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-6)


def test_soft_target_loss_refuses_missing_or_misshapen_targets():
    with pytest.raises(ValueError, match="needs SSM targets"):
        MedFilipLoss()(IMAGES, TEXTS, torch.tensor(1.0))
    with pytest.raises(ValueError, match="differ in shape"):
        MedFilipLoss()(IMAGES, TEXTS, torch.tensor(1.0), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown loss mode"):
        MedFilipLoss("contrastive")


def test_perfect_soft_targets_give_a_lower_loss_than_wrong_ones():
    loss = MedFilipLoss("ssm_cosine")
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert loss(IMAGES, IMAGES, torch.tensor(1.0), right) < loss(IMAGES, IMAGES, torch.tensor(1.0), 1 - right)
