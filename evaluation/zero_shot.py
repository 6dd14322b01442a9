"""Zero-shot multi-label classification: one prompt per category, "<category>. <description>"
(the IKI description from the knowledge base); the score of (image, category) is the cosine
similarity of their embeddings, per class and without a softmax across classes (the labels are
multi-label, so classes do not compete).

The set is split patient-wise into VAL (thresholds for F1/accuracy) and TEST (every reported
number); AUC and its CI are on TEST. Unseen categories (in the knowledge base but never in the
pre-training texts) are reported apart from seen ones; the caller says which they are, e.g. with
`unseen_categories(kb, training_texts folder)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluation.datasets import LabelledImages
from evaluation.encode import embed_images, embed_texts, image_tensor
from evaluation.metrics import classification_report, mean_auc, rank_auc, roc_points
from evaluation.splits import patient_split
from knowledge.base import KnowledgeBase, canonical_category, category_prompts
from medfilip_model.dual_encoder import MedFilipModel, Tokenizer
from knowledge.texts import text_categories


def unseen_categories(kb: KnowledgeBase, texts_dir: str | Path) -> list[str]:
    """Knowledge-base categories that no pre-training text (the training_texts folder) has."""
    seen = text_categories(texts_dir)
    return sorted(set(kb.categories) - {canonical_category(c) for c in seen})


def zero_shot_scores(model: MedFilipModel, tokenizer: Tokenizer, images: torch.Tensor, prompts: dict[str, str],
                     batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """[N, C] cosine similarity of each image with each prompt (in the mapping's order)."""
    image_features = embed_images(model, images, batch_size, device)
    text_features = embed_texts(model, tokenizer, list(prompts.values()), device=device)
    return (image_features @ text_features.T).numpy()


def evaluate_zero_shot(
    model: MedFilipModel,
    tokenizer: Tokenizer,
    data: LabelledImages,
    kb: KnowledgeBase,
    *,
    unseen: Sequence[str] = (),
    val_fraction: float = 0.3,
    criterion: str = "f1",
    n_boot: int = 1000,
    seed: int = 0,
    paper_protocol: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    images: torch.Tensor | None = None,
) -> dict:
    """Per-class and mean AUC (95% CI) on TEST, F1/accuracy at VAL thresholds, seen/unseen apart.

    Returns classification_report's dict plus "dataset", "prompts", "seen" and "unseen"
    ({"categories", "mean_auc", "mean_auc_ci"}), "roc" (test ROC points per class) and
    "split" (image counts). `images` may pass the set's pre-decoded uint8 tensor.
    """
    prompts = category_prompts(kb, data.categories)
    if not prompts:
        raise ValueError(f"{data.name}: no category of {data.categories} is in the knowledge base")
    data = data.select_categories(list(prompts))
    if images is None:
        images = image_tensor(data, model.image_size)
    scores = zero_shot_scores(model, tokenizer, images, prompts, batch_size, device)
    split = patient_split(data.labels, data.patient_ids, (val_fraction, 1 - val_fraction), ("val", "test"), seed)
    val, test = split["val"], split["test"]
    categories = list(prompts)
    report = classification_report(data.labels[val], scores[val], data.labels[test], scores[test], categories,
                                   criterion=criterion, n_boot=n_boot, seed=seed, paper_protocol=paper_protocol)
    unseen_set = {canonical_category(c) for c in unseen}
    for group, members in (("seen", [c for c in categories if c not in unseen_set]),
                           ("unseen", [c for c in categories if c in unseen_set])):
        report[group] = _group_summary(report, members, data.labels[test], scores[test], categories, n_boot, seed)
    report.update(dataset=data.name, prompts=prompts, roc=roc_points(data.labels[test], scores[test], categories),
                  split={"val": int(len(val)), "test": int(len(test))}, score="cosine similarity, no softmax")
    return report


def _group_summary(report: dict, members: list[str], labels: np.ndarray, scores: np.ndarray,
                   categories: list[str], n_boot: int, seed: int) -> dict:
    """Mean AUC of a group of categories with a bootstrap CI over the same resamples."""
    evaluable = [c for c in members if c in report["per_class"]]
    summary = {"categories": members, "evaluable": evaluable,
               "mean_auc": mean_auc({c: report["per_class"][c]["auc"] for c in evaluable}),
               "mean_auc_ci": (float("nan"), float("nan"))}
    if evaluable:
        columns = [categories.index(c) for c in evaluable]
        rows = np.random.default_rng(seed).integers(0, len(labels), size=(n_boot, len(labels)))
        aucs = np.stack([rank_auc(labels[rows, j], scores[rows, j]) for j in columns], axis=1)
        means = aucs[~np.isnan(aucs).any(axis=1)].mean(axis=1)
        if means.size:
            summary["mean_auc_ci"] = tuple(float(q) for q in np.quantile(means, [0.025, 0.975]))
    return summary
