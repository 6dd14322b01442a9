"""Image<->text retrieval: Recall@K, Precision@K and Hit@K for K = 1, 5, 10.

Relevance is by shared findings: a text is relevant to an image (and vice versa) when they share
at least one positive category. `relevance="identical_labels"` counts it as the published code
(downstream/retrieve.py) does: relevant only when the two label sets are identical. Images without any finding carry the "no finding" category
(`with_no_finding`), so normal images match normal texts instead of being unanswerable.

Per query, with R relevant items in the gallery and r of them in the top K:
Recall@K = r / R, Precision@K = r / min(K, gallery size), Hit@K = 1 if r > 0. Means are over queries with R > 0
(queries with nothing to find are counted in `queries_without_relevant`).
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from evaluation.datasets import LabelledImages
from evaluation.encode import embed_images, embed_texts, image_tensor
from knowledge.base import NO_FINDING, KnowledgeBase, category_prompt
from medfilip_model.dual_encoder import MedFilipModel, Tokenizer

Relevance = Literal["shared_category", "identical_labels"]
RELEVANCE_RULES = {
    "shared_category": "relevant = image and text share at least one positive category ('no finding' counts as one)",
    "identical_labels": "relevant = image and text have identical label sets (the published code's rule)",
}
RELEVANCE = RELEVANCE_RULES["shared_category"]
DEFINITIONS = {
    "recall@k": "relevant items in the top K / relevant items in the gallery, mean over queries",
    "precision@k": "relevant items in the top K / K, mean over queries",
    "hit@k": "share of queries with at least one relevant item in the top K",
}


def retrieval_metrics(image_features: torch.Tensor | np.ndarray, text_features: torch.Tensor | np.ndarray,
                      image_labels: np.ndarray, text_labels: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                      relevance_rule: Relevance = "shared_category") -> dict:
    """Both directions from unit-norm features and [N, C] / [T, C] 0/1 labels over one category list."""
    if relevance_rule not in RELEVANCE_RULES:
        raise ValueError(f"unknown relevance rule {relevance_rule!r}; expected one of {sorted(RELEVANCE_RULES)}")
    images, texts = _numpy(image_features), _numpy(text_features)
    similarity = images @ texts.T
    image_bits, text_bits = np.asarray(image_labels, bool)[:, None, :], np.asarray(text_labels, bool)[None, :, :]
    if relevance_rule == "identical_labels":
        relevance = (image_bits == text_bits).all(-1)
    else:
        relevance = (image_bits & text_bits).any(-1)
    return {
        "relevance": RELEVANCE_RULES[relevance_rule],
        "definitions": DEFINITIONS,
        "images": int(len(images)),
        "texts": int(len(texts)),
        "image_to_text": _ranked_metrics(similarity, relevance, ks),
        "text_to_image": _ranked_metrics(similarity.T, relevance.T, ks),
    }


def evaluate_retrieval(model: MedFilipModel, tokenizer: Tokenizer, data: LabelledImages, texts: Sequence[str],
                       text_labels: np.ndarray, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64,
                       device: str | torch.device = "cpu", images: torch.Tensor | None = None,
                       relevance_rule: Relevance = "shared_category") -> dict:
    """Embeds the set's images and the texts and scores retrieval; text_labels over data.categories."""
    if images is None:
        images = image_tensor(data, model.image_size)
    image_features = embed_images(model, images, batch_size, device)
    text_features = embed_texts(model, tokenizer, texts, device=device)
    result = retrieval_metrics(image_features, text_features, data.labels, text_labels, ks, relevance_rule)
    result["dataset"] = data.name
    return result


def paired_retrieval_metrics(image_features: torch.Tensor | np.ndarray, text_features: torch.Tensor | np.ndarray,
                             text_of_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K when each image has exactly one relevant text (its own report) and each text the
    images of its study: image->text, the report in the top K; text->image, any of its images in
    the top K. Ties count against the query (an equally similar other item ranks first)."""
    images, texts = _numpy(image_features), _numpy(text_features)
    text_of_image = np.asarray(text_of_image, dtype=np.int64)
    similarity = images @ texts.T  # [N, T]
    own = similarity[np.arange(len(images)), text_of_image]
    # Other texts at least as similar as the own report.
    image_rank = (similarity >= own[:, None]).sum(axis=1) - 1
    relevant = text_of_image[:, None] == np.arange(len(texts))[None, :]  # [N, T]
    best = np.where(relevant, similarity, -np.inf).max(axis=0)  # per text: its most similar own image
    text_rank = ((similarity >= best[None, :]) & ~relevant).sum(axis=0)
    answerable = relevant.any(axis=0)
    if not answerable.all():
        raise ValueError(f"{int((~answerable).sum())} texts have no image")
    return {
        "relevance": "exact pairs: an image and its own study's report",
        "images": int(len(images)), "texts": int(len(texts)),
        "image_to_text": {f"recall@{k}": float(np.mean(image_rank < k)) for k in ks},
        "text_to_image": {f"recall@{k}": float(np.mean(text_rank < k)) for k in ks},
    }


def evaluate_report_retrieval(model: MedFilipModel, tokenizer: Tokenizer, images: LabelledImages, texts: Sequence[str],
                              text_of_image: np.ndarray, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64,
                              device: str | torch.device = "cpu") -> dict:
    """Image <-> own-report retrieval (e.g. evaluation.benchmark_sets.mimic_cxr_report_pairs)."""
    image_features = embed_images(model, image_tensor(images, model.image_size), batch_size, device)
    text_features = embed_texts(model, tokenizer, texts, device=device)
    result = paired_retrieval_metrics(image_features, text_features, text_of_image, ks)
    result["dataset"] = images.name
    return result


def with_no_finding(data: LabelledImages) -> LabelledImages:
    """The set with a "no finding" column, positive where no other category is."""
    if NO_FINDING in data.categories:
        return data
    normal = (data.labels.sum(axis=1) == 0).astype(np.int8)[:, None]
    from dataclasses import replace

    return replace(data, categories=[*data.categories, NO_FINDING], labels=np.hstack([data.labels, normal]))


def prompt_gallery(kb: KnowledgeBase, categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """One "<category>. <description>" text per described category; labels one-hot over categories."""
    kept = [c for c in categories if c in kb.categories]
    texts = [category_prompt(kb, c) for c in kept]
    labels = np.zeros((len(kept), len(categories)), dtype=np.int8)
    for i, c in enumerate(kept):
        labels[i, list(categories).index(c)] = 1
    return texts, labels


def _ranked_metrics(similarity: np.ndarray, relevance: np.ndarray, ks: Sequence[int]) -> dict:
    relevant_total = relevance.sum(axis=1)
    answerable = relevant_total > 0
    order = np.argsort(-similarity, axis=1, kind="stable")
    ranked_relevance = np.take_along_axis(relevance, order, axis=1)
    out: dict[str, float | int] = {"queries": int(len(similarity)),
                                   "queries_without_relevant": int((~answerable).sum())}
    for k in ks:
        found = ranked_relevance[:, :k].sum(axis=1)[answerable]
        total = relevant_total[answerable]
        out[f"recall@{k}"] = float(np.mean(found / total)) if found.size else float("nan")
        # A gallery smaller than K cannot fill K places: divide by what can be shown.
        out[f"precision@{k}"] = float(np.mean(found / min(k, similarity.shape[1]))) if found.size else float("nan")
        out[f"hit@{k}"] = float(np.mean(found > 0)) if found.size else float("nan")
    return out


def _numpy(features: torch.Tensor | np.ndarray) -> np.ndarray:
    return features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
