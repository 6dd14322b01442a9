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


@pytest.mark.parametrize(("target", "root"), [(1.0, 1.122751), (0.0, -0.222323), (0.5, 0.445246)])
def test_soft_target_loss_is_smallest_at_logits_near_its_targets(target, root):
    """MSE(x, t) + BCE(x, t) has derivative 2(x - t) + sigmoid(x) - t: zero at x = 1.122751 for
    t = 1 (2 * 0.122751 + 0.754498 - 1 = 0), at x = -0.222323 for t = 0 and 0.445246 for t = 0.5
    (bisection of that derivative, to 6 decimals). So the
    paper's loss wants every logit in about [-0.22, 1.12]: at CLIP's starting scale 1/0.07 the
    cosines themselves must sit in about [-0.016, 0.079] (benchmarks/loss_claim.py)."""
    from training.loss import soft_target_loss

    x = torch.tensor([root], dtype=torch.float64, requires_grad=True)
    soft_target_loss(x[None], torch.tensor([[target]], dtype=torch.float64)).backward()
    # float64, root given to 6 decimals: the derivative (slope at most 2.25) is below 2.25 * 5e-7.
    assert abs(float(x.grad)) < 2.25 * 5e-7
    for off in (-0.05, 0.05):
        x_off = torch.tensor([[root + off]], dtype=torch.float64)
        assert soft_target_loss(x_off, torch.tensor([[target]], dtype=torch.float64)) > soft_target_loss(
            torch.tensor([[root]], dtype=torch.float64), torch.tensor([[target]], dtype=torch.float64))
