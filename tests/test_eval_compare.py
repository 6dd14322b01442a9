"""Paired comparisons over seeds: the verdict follows the bootstrap interval of the difference,
the pairing removes the item-to-item spread both arms share, and the seeds' spread reaches the
interval."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.compare import (PairedSeed, describe, evaluable_columns, mean_auc_statistic, mean_value_statistic,
                                paired_comparison, verdict)


def _scored(seed: int, n: int = 120, classes: int = 3, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.4).astype(np.int8)
    return labels, signal * labels + rng.normal(size=labels.shape)


def test_an_informative_candidate_is_better_than_noise_and_the_swap_is_worse():
    seeds = []
    for s in range(3):
        labels, informative = _scored(s, signal=2.0)
        noise = np.random.default_rng(100 + s).normal(size=labels.shape)
        seeds.append(PairedSeed(s, informative, noise, truth=labels))
    result = paired_comparison(seeds, mean_auc_statistic, n_boot=300)
    assert result["verdict"] == "better" and result["difference"]["ci"][0] > 0
    assert result["candidate"]["mean"] > 0.8 and abs(result["baseline"]["mean"] - 0.5) < 0.15
    assert len(result["candidate"]["per_seed"]) == 3 and result["candidate"]["sd"] > 0
    swapped = paired_comparison([PairedSeed(p.seed, p.baseline, p.candidate, p.truth) for p in seeds],
                                mean_auc_statistic, n_boot=300)
    assert swapped["verdict"] == "worse" and swapped["difference"]["ci"][1] < 0
    # Same seed, same resamples: the swapped interval is the mirror image.
    np.testing.assert_allclose(swapped["difference"]["ci"], [-result["difference"]["ci"][1],
                                                             -result["difference"]["ci"][0]], rtol=0, atol=1e-12)
    assert "better" in describe(result, "mean AUC", "pretrained", "random")


def test_identical_arms_show_no_detectable_difference():
    labels, scores = _scored(7)
    seeds = [PairedSeed(s, scores, scores.copy(), truth=labels) for s in range(3)]
    result = paired_comparison(seeds, mean_auc_statistic, n_boot=200)
    assert result["difference"]["ci"] == (0.0, 0.0) and result["verdict"] == "no detectable difference"


def test_pairing_detects_a_small_shift_that_the_item_spread_would_hide():
    # Per-image Dice spread over 0..1, the candidate 0.01 above the baseline on every image: an
    # unpaired comparison could not see it, the paired one must.
    rng = np.random.default_rng(0)
    seeds = []
    for s in range(3):
        base = rng.uniform(0.0, 0.98, size=80)
        seeds.append(PairedSeed(s, base + 0.01, base))
    result = paired_comparison(seeds, mean_value_statistic, n_boot=200)
    assert result["verdict"] == "better"
    # Every resample's difference is 0.01 up to float64 rounding of a mean of 80 values.
    np.testing.assert_allclose(result["difference"]["ci"], [0.01, 0.01], rtol=0, atol=1e-12)
    # The standard error of one arm's mean alone is larger than the shift.
    assert all(p.baseline.std(ddof=1) / np.sqrt(len(p.baseline)) > 0.02 for p in seeds)


def test_seeds_that_disagree_widen_the_interval_to_no_detectable_difference():
    # Within each seed the difference is clear (+0.3 or -0.3 on every item), but the seeds disagree:
    # resampling seeds must carry that into the interval.
    base = np.full(50, 0.5)
    seeds = [PairedSeed(0, base + 0.3, base), PairedSeed(1, base - 0.3, base), PairedSeed(2, base + 0.3, base)]
    result = paired_comparison(seeds, mean_value_statistic, n_boot=400)
    low, high = result["difference"]["ci"]
    assert low < 0 < high and result["verdict"] == "no detectable difference"
    assert result["difference"]["per_seed"] == pytest.approx([0.3, -0.3, 0.3], abs=1e-12)
    assert result["difference"]["sd"] == pytest.approx(np.std([0.3, -0.3, 0.3], ddof=1), abs=1e-12)


def test_auc_statistic_is_scikit_learns_mean_auc():
    labels, scores = _scored(3, n=60, classes=4)
    scores = np.round(scores, 1)  # ties, which both count one half
    expected = np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in range(4)])
    rows = np.arange(60)[None]
    assert mean_auc_statistic(labels[rows], scores[rows])[0] == pytest.approx(expected, rel=0, abs=1e-12)


def test_resamples_without_a_positive_are_dropped_and_counted():
    labels = np.zeros((12, 1), dtype=np.int8)
    labels[0] = 1  # one positive: many resamples miss it
    scores = np.linspace(0, 1, 12)[:, None]
    result = paired_comparison([PairedSeed(0, scores, scores[::-1].copy(), truth=labels)], mean_auc_statistic,
                               n_boot=300)
    assert 0 < result["difference"]["kept"] < 300
    assert not np.isnan(result["difference"]["ci"]).any()


def test_evaluable_columns_and_lower_is_better_verdicts():
    assert evaluable_columns(np.array([[1, 0, 1], [0, 0, 1]])).tolist() == [0]
    assert verdict((0.1, 0.2)) == "better" and verdict((-0.2, -0.1)) == "worse"
    assert verdict((0.1, 0.2), higher_is_better=False) == "worse"
    assert verdict((-0.1, 0.0)) == "no detectable difference"
    assert verdict((float("nan"), float("nan"))) == "not evaluable"


def test_arms_scored_on_different_items_are_refused():
    with pytest.raises(ValueError, match="same items"):
        PairedSeed(0, np.zeros(3), np.zeros(4))
