"""Zero-shot scoring: one prompt per category ("<category>. <description>", given by the caller),
scores = cosine(image, prompt), and the one per-class AUC that training and evaluation share."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import roc_auc_score


class TextCategories:
    """category and negation of every text_id, from texts.parquet."""

    def __init__(self, texts_path: str | Path):
        table = pq.read_table(texts_path, columns=["text_id", "category", "negated"])
        self.category = dict(zip(table.column("text_id").to_pylist(), table.column("category").to_pylist()))
        self.negated = dict(zip(table.column("text_id").to_pylist(), table.column("negated").to_pylist()))

    def labels(self, image_text_ids: Sequence[Sequence[int]], categories: Sequence[str]) -> np.ndarray:
        """[N, C] 1 where the image has a positive (non-negated) text of that category."""
        column = {c: j for j, c in enumerate(categories)}
        labels = np.zeros((len(image_text_ids), len(categories)), dtype=np.int8)
        for i, ids in enumerate(image_text_ids):
            for text_id in ids:
                j = column.get(self.category[text_id])
                if j is not None and not self.negated[text_id]:
                    labels[i, j] = 1
        return labels


@torch.no_grad()
def prompt_embeddings(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    prompts: Mapping[str, str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit-norm text features [C, D] of the prompts, in the mapping's order."""
    tokens = tokenizer(list(prompts.values())).to(device)
    return torch.nn.functional.normalize(encode_text(tokens).float(), dim=-1)


def per_class_auc(labels: np.ndarray, scores: np.ndarray, categories: Sequence[str]) -> dict[str, float]:
    """scikit-learn ROC AUC per category, from [N, C] 0/1 `labels` and [N, C] `scores` (higher = more
    likely positive); a category without both positives and negatives has no AUC and is left out.
    The one implementation: the per-epoch metric of training and every evaluation use it."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim == 1:  # one class
        labels, scores = labels[:, None], scores.reshape(-1, 1)
    if labels.shape != scores.shape or labels.shape[1] != len(categories):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be [N, {len(categories)}]")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    result = {}
    for j, category in enumerate(categories):
        positives = int((labels[:, j] == 1).sum())
        if 0 < positives < len(labels):
            result[category] = float(roc_auc_score(labels[:, j], scores[:, j]))
    return result


def mean_auc(per_class: Mapping[str, float]) -> float:
    """The unweighted mean over the evaluable categories; NaN when there is none."""
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")
