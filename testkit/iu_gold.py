"""The IU gold standard (testkit/data/iu_gold_labels.csv) and how a labeller is scored on it.

Shared by benchmarks/extract.py --quality and the dev-set floor test. Scoring, per ChestX-ray14
class: a gold cell counts positive when it is 1 (policy "uncertain as negative") or 1 / -1
("uncertain as positive"); 0 and empty (not mentioned) are negative. A predicted label counts
the same way: 1, or 1 / -1. No_Finding is not one of the 14 classes and is not scored.
"""

from __future__ import annotations

import csv
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pyarrow as pa

from extraction.labels import labels_table, load_label_map
from extraction.to_triplets import to_triplets

GOLD_CSV = Path(__file__).parent / "data" / "iu_gold_labels.csv"
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
           "Hernia")
POLICIES = {"uncertain as positive": {1, -1}, "uncertain as negative": {1}}
Labels = Mapping[str, int | None]


def iu_archive() -> Path:
    import torchxrayvision

    return Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"


def load_iu_texts(ids: set[str] | None = None) -> dict[str, str]:
    """Report id (the XML file stem) -> FINDINGS and IMPRESSION, one per line; nothing else is read."""
    texts = {}
    with tarfile.open(iu_archive()) as tar:
        for member in tar.getmembers():
            stem = Path(member.name).stem
            if not member.name.endswith(".xml") or (ids is not None and stem not in ids):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            parts = {n.get("Label"): (n.text or "").strip() for n in root.iter("AbstractText")}
            text = "\n".join(parts[s] for s in ("FINDINGS", "IMPRESSION") if parts.get(s))
            if text:
                texts[stem] = text
    return texts


def load_gold(split: str | None = None) -> dict[str, dict[str, int | None]]:
    """report id -> class -> 1 / 0 / -1 / None, for one split or both."""
    gold = {}
    with GOLD_CSV.open() as f:
        for row in csv.DictReader(f):
            if split is None or row["split"] == split:
                gold[row["report_id"]] = {c: int(row[c]) if row[c] else None for c in CLASSES}
    return gold


def rules_labels(backend, texts: Mapping[str, str]) -> dict[str, Labels]:
    """The real extraction path: backend.complete -> parse -> to_triplets -> ChestX-ray14 labels."""
    ids = list(texts)
    answers = pa.table({"study_id": ids, "answer": [backend.complete(texts[i]).text for i in ids]})
    triplets, _ = to_triplets(answers, backend.vocabulary)
    table = labels_table(triplets, load_label_map("chestxray14", vocabulary=backend.vocabulary), ids)
    return {row.pop("study_id"): row for row in table.to_pylist()}


@dataclass
class Score:
    counts: dict[str, tuple[int, int, int]]  # class -> (tp, fp, fn)

    def prf(self, label: str) -> tuple[float, float, float]:
        return _prf(*self.counts[label])

    @property
    def micro(self) -> tuple[float, float, float]:
        return _prf(*(sum(c[i] for c in self.counts.values()) for i in range(3)))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes with a gold positive in the split (others have no F1)."""
        scored = [self.prf(label)[2] for label, (tp, _, fn) in self.counts.items() if tp + fn]
        return sum(scored) / len(scored) if scored else 0.0


def score(gold: Mapping[str, Labels], predicted: Mapping[str, Labels], policy: str) -> Score:
    positive = POLICIES[policy]
    counts = {}
    for label in CLASSES:
        tp = fp = fn = 0
        for rid, truth in gold.items():
            said = predicted.get(rid, {}).get(label) in positive
            real = truth[label] in positive
            tp += said and real
            fp += said and not real
            fn += real and not said
        counts[label] = (tp, fp, fn)
    return Score(counts)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
