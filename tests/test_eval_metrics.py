"""evaluation.metrics against scikit-learn, and the rule that thresholds never see test labels."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from evaluation.metrics import (
    PAPER_PROTOCOL, bootstrap_cis, choose_thresholds, classification_report, f1_accuracy, paper_protocol_f1,
    per_class_auc, rank_auc, roc_points,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(7)
    labels = (rng.random((120, 3)) < [0.3, 0.5, 0.1]).astype(np.int8)
    scores = labels * rng.normal(0.8, 0.5, labels.shape) + rng.normal(0, 0.5, labels.shape)
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    return labels, scores


def test_auc_matches_scikit_learn_including_ties(scored):
    labels, scores = scored
    aucs = per_class_auc(labels, scores, ["a", "b", "c"])
    for j, name in enumerate("abc"):
        expected = roc_auc_score(labels[:, j], scores[:, j])
        assert aucs[name] == pytest.approx(expected)
        assert rank_auc(labels[:, j], scores[:, j])[0] == pytest.approx(expected, abs=1e-12)


def test_class_without_positives_is_not_evaluable(scored):
    labels, scores = scored
    labels = labels.copy()
    labels[:, 2] = 0
    assert set(per_class_auc(labels, scores, ["a", "b", "c"])) == {"a", "b"}
    report = classification_report(labels, scores, labels, scores, ["a", "b", "c"], n_boot=50)
    assert report["not_evaluable"] == ["c"] and "c" not in report["per_class"]


def test_f1_and_accuracy_at_threshold_match_scikit_learn(scored):
    labels, scores = scored
    thresholds = np.array([0.2, 0.5, 1.0])
    f1, acc = f1_accuracy(labels, scores, thresholds)
    for j in range(3):
        predicted = scores[:, j] >= thresholds[j]
        assert f1[j] == pytest.approx(f1_score(labels[:, j], predicted, zero_division=0))
        assert acc[j] == pytest.approx(accuracy_score(labels[:, j], predicted))


def test_f1_threshold_is_the_best_cut_on_the_split_it_is_given(scored):
    labels, scores = scored
    chosen = choose_thresholds(labels, scores, "f1")
    for j in range(3):
        best = max(f1_score(labels[:, j], scores[:, j] >= cut) for cut in np.unique(scores[:, j]))
        assert f1_score(labels[:, j], scores[:, j] >= chosen[j]) == pytest.approx(best)


def test_thresholds_come_from_validation_not_test():
    # Val positives score above 0.3, test positives only above 0.7: a protocol that looked at test
    # labels would cut near 0.7; the validation protocol must cut at val's 0.3.
    val_scores = np.array([0.1, 0.2, 0.25, 0.3, 0.35, 0.4])
    val_labels = np.array([0, 0, 0, 1, 1, 1])
    test_scores = np.array([0.1, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    test_labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    for criterion in ("f1", "youden"):
        report = classification_report(val_labels, val_scores, test_labels, test_scores, ["x"],
                                       criterion=criterion, n_boot=50, paper_protocol=True)
        assert report["per_class"]["x"]["threshold"] == pytest.approx(0.3)
        assert report["per_class"]["x"]["f1"] == pytest.approx(f1_score(test_labels, test_scores >= 0.3))
        paper = report["paper_protocol"]
        assert paper["protocol"] == PAPER_PROTOCOL and "optimistic" in paper["protocol"]
        assert paper["per_class"]["x"]["threshold"] == pytest.approx(0.7)
        assert paper["mean_f1"] == 1.0 > report["mean_f1"]


def test_paper_protocol_is_never_below_the_validation_protocol(scored):
    labels, scores = scored
    half = len(labels) // 2
    report = classification_report(labels[:half], scores[:half], labels[half:], scores[half:], ["a", "b", "c"],
                                   n_boot=20, paper_protocol=True)
    for name, entry in report["per_class"].items():
        assert report["paper_protocol"]["per_class"][name]["f1"] >= entry["f1"] - 1e-12


def test_bootstrap_is_seeded_brackets_the_estimate_and_skips_degenerate_resamples():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 1), dtype=np.int8)
    labels[:2, 0] = 1  # 2 positives in 40: many resamples hold none
    scores = rng.random((40, 1)) + labels
    first = bootstrap_cis(labels, scores, np.array([0.9]), n_boot=300, seed=3)
    again = bootstrap_cis(labels, scores, np.array([0.9]), n_boot=300, seed=3)
    other = bootstrap_cis(labels, scores, np.array([0.9]), n_boot=300, seed=4)
    low, high, kept = first["auc"]["per_class"][0]
    assert (low, high, kept) == tuple(again["auc"]["per_class"][0])
    assert first["auc"]["per_class"][0] != other["auc"]["per_class"][0]
    assert 0 < kept < 300  # degenerate resamples (no positive) were skipped, not scored
    assert low <= roc_auc_score(labels[:, 0], scores[:, 0]) <= high
    f1_low, f1_high, _ = first["f1"]["per_class"][0]
    assert f1_low <= f1_accuracy(labels, scores, np.array([0.9]))[0][0] <= f1_high


def test_roc_points_include_both_end_points(scored):
    labels, scores = scored
    curve = roc_points(labels, scores, ["a", "b", "c"])["a"]
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)


def test_paper_protocol_sweep_finds_the_best_f1(scored):
    labels, scores = scored
    paper = paper_protocol_f1(labels, scores, ["a", "b", "c"])
    best = max(f1_score(labels[:, 0], scores[:, 0] >= cut) for cut in np.unique(scores[:, 0]))
    assert paper["per_class"]["a"]["f1"] == pytest.approx(best)
