"""Retrieval relevance as the published code counts it (identical label lists), next to ours."""
import numpy as np
import pytest

from evaluation.retrieval import retrieval_metrics


def test_identical_labels_rule_counts_only_exact_label_sets():
    images = np.eye(3)[[0, 1, 2, 0]]  # image 3 looks like image 0
    texts = np.eye(3)
    image_labels = np.array([[1, 0], [0, 1], [1, 1], [1, 0]])
    text_labels = np.array([[1, 0], [0, 1], [1, 0]])
    ours = retrieval_metrics(images, texts, image_labels, text_labels, ks=(1,))
    reference = retrieval_metrics(images, texts, image_labels, text_labels, ks=(1,), relevance_rule="identical_labels")
    # Top-1 texts: 0, 1, 2, 0. Image 2 ({a, b}) shares "a" with text 2 but its label set differs.
    assert ours["image_to_text"]["hit@1"] == pytest.approx(1.0)
    assert reference["image_to_text"]["hit@1"] == pytest.approx(1.0)  # image 2 has no exact match: not a query
    assert reference["image_to_text"]["queries_without_relevant"] == 1
    assert ours["image_to_text"]["queries_without_relevant"] == 0
    # Relevant texts: ours image0 {t0,t2}, image1 {t1}, image2 {t0,t1,t2}, image3 {t0,t2};
    # the reference's the same but none for image 2.
    assert ours["image_to_text"]["recall@1"] == pytest.approx(np.mean([1 / 2, 1, 1 / 3, 1 / 2]))
    assert reference["image_to_text"]["recall@1"] == pytest.approx(np.mean([1 / 2, 1, 1 / 2]))
    assert "identical label sets" in reference["relevance"]
    with pytest.raises(ValueError, match="relevance rule"):
        retrieval_metrics(images, texts, image_labels, text_labels, relevance_rule="overlap")
