"""Patient-wise stratified splits and stratified label-fraction subsets, with fixed seeds.

Stratifying a multi-label set: each image gets one stratum, its rarest positive category (or
"none"), so rare classes are spread over the splits first. Splits are by patient (a patient's
images never straddle train/val/test), through scikit-learn's StratifiedGroupKFold.

Label fractions (1%, 10%, 100%) are nested: the images of a smaller fraction are always among
those of a larger one for the same seed, so the curve over fractions compares like with like.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def strata(labels: np.ndarray) -> np.ndarray:
    """Per image: the column index of its rarest positive category, or -1 when it has none."""
    labels = np.asarray(labels)
    prevalence = labels.sum(axis=0)
    rarity = np.where(labels > 0, prevalence[None, :], np.iinfo(np.int64).max)
    rarest = rarity.argmin(axis=1)
    return np.where(labels.any(axis=1), rarest, -1)


def patient_split(
    labels: np.ndarray,
    patient_ids: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    names: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
    folds: int = 10,
) -> dict[str, np.ndarray]:
    """Image indices per split, patient-wise and stratified; fractions are of images, to the
    nearest of `folds` folds (each split gets at least one fold)."""
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions} must sum to 1 and match names {names}")
    groups = np.asarray(patient_ids)
    folds = min(folds, len(np.unique(groups)))
    if folds < len(names):
        raise ValueError(f"{len(np.unique(groups))} patients cannot fill {len(names)} splits")
    fold_of = _assign_folds(strata(labels), groups, folds, seed)
    counts = _fold_counts(fractions, folds)
    bounds = np.cumsum([0, *counts])
    return {name: np.flatnonzero((fold_of >= bounds[k]) & (fold_of < bounds[k + 1]))
            for k, name in enumerate(names)}


def label_fraction(
    labels: np.ndarray,
    fraction: float,
    seed: int = 0,
    indices: np.ndarray | None = None,
    min_positives: int = 1,
) -> np.ndarray:
    """A stratified, nested subset holding `fraction` of `indices` (all rows by default).

    Each stratum gives its share, in one seeded order; then the first `min_positives` positives
    (in that order) of every class are added, so a 1% subset of a small set still has something
    to learn per class. The subset can therefore be slightly larger than the fraction. Those
    first positives are the same for every fraction, which keeps the subsets nested.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    if fraction == 1.0:
        return np.sort(indices)
    rng = np.random.default_rng(seed)
    order = indices[rng.permutation(len(indices))]  # one seeded order: prefixes nest
    rank = np.empty(len(order), dtype=np.int64)
    y = strata(labels[order])
    # Position of each image within its stratum, scaled: taking rank < fraction*size per stratum.
    for stratum in np.unique(y):
        members = np.flatnonzero(y == stratum)
        rank[members] = np.arange(len(members))
    sizes = {s: int((y == s).sum()) for s in np.unique(y)}
    relative = np.array([(rank[i] + 0.5) / sizes[y[i]] for i in range(len(order))])
    target = max(1, int(round(fraction * len(order))))
    chosen = set(order[np.argsort(relative, kind="stable")[:target]].tolist())
    for j in range(labels.shape[1]):
        positives = order[labels[order, j] > 0]
        chosen.update(positives[:min_positives].tolist())
    return np.sort(np.fromiter(chosen, dtype=np.int64))


def _assign_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold per image by StratifiedGroupKFold; when the strata are too thin for that (every class
    rarer than the fold count), by finding/no finding, and failing that by shuffled patients."""
    fold_of = np.empty(len(groups), dtype=np.int64)
    for stratum in (y, (y >= 0).astype(np.int64)):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        try:
            with warnings.catch_warnings():
                # A class rarer than the fold count cannot be in every fold: expected, not news.
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                for fold, (_, held) in enumerate(splitter.split(np.zeros(len(groups)), stratum, groups)):
                    fold_of[held] = fold
            return fold_of
        except ValueError:
            continue
    patients = np.unique(groups)
    patient_fold = dict(zip(np.random.default_rng(seed).permutation(patients), np.arange(len(patients)) % folds))
    return np.array([patient_fold[g] for g in groups], dtype=np.int64)


def _fold_counts(fractions: Sequence[float], folds: int) -> list[int]:
    """Folds per split by largest remainder, each split at least one."""
    raw = np.asarray(fractions) * folds
    counts = np.maximum(1, np.floor(raw).astype(int))
    while counts.sum() < folds:
        counts[int(np.argmax(raw - counts))] += 1
    while counts.sum() > folds:
        counts[int(np.argmax(counts))] -= 1
    return counts.tolist()
