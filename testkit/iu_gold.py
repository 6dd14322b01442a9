"""The IU gold standards (testkit/data/) and how a labeller is scored on them.

Two conventions (docs/labelling_guideline.md), each with a development set of 600 reports
(iu_dev_<convention>.csv, tuned on) and a held-out set of 300 (iu_heldout_<convention>.csv,
never tuned on, only scored by benchmarks/extract.py --quality). The legacy labels of the 600
dev reports under the project's earlier rules stay in iu_gold_labels.csv (load_legacy_gold).

Scoring, per class: a gold cell counts positive when it is 1 (policy "uncertain as negative")
or 1 / -1 ("uncertain as positive"); 0 and empty (not mentioned) are negative. A predicted
label counts the same way. Under `chestxray14` the 14 findings are scored and No_Finding is
not (it is no finding); under `chexpert` all 14 observations are, No Finding included.
Shared by benchmarks/extract.py --quality, the comparators and the dev-set floor test.
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

DATA = Path(__file__).parent / "data"
LEGACY_CSV = DATA / "iu_gold_labels.csv"
# Label names as knowledge/label_maps.yaml and the public label sets write them; the gold
# CSV columns are the same names with "_" for " ".
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
           "Hernia")
CHEXPERT_CLASSES = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                    "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
CONVENTIONS = {"chestxray14": CLASSES, "chexpert": CHEXPERT_CLASSES}
SPLITS = ("dev", "heldout")
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


def gold_csv(convention: str, split: str) -> Path:
    if convention not in CONVENTIONS or split not in SPLITS:
        raise ValueError(f"no IU gold set {convention!r}/{split!r}: conventions {list(CONVENTIONS)}, "
                         f"splits {list(SPLITS)}")
    return DATA / f"iu_{split}_{convention}.csv"


def load_gold(convention: str, split: str) -> dict[str, dict[str, int | None]]:
    """report id -> class (label map name) -> 1 / 0 / -1 / None, of one convention and split."""
    return _read(gold_csv(convention, split), CONVENTIONS[convention])


def load_legacy_gold() -> dict[str, dict[str, int | None]]:
    """The 600 dev reports under the earlier rules (ChestX-ray14 classes), for comparison only."""
    return _read(LEGACY_CSV, CLASSES)


def _read(path: Path, classes: tuple[str, ...]) -> dict[str, dict[str, int | None]]:
    with path.open() as f:
        return {row["report_id"]: {c: _cell(row[c.replace(" ", "_")]) for c in classes}
                for row in csv.DictReader(f)}


def _cell(text: str) -> int | None:
    return int(text) if text.strip() else None


def rules_labels(backend, texts: Mapping[str, str], convention: str = "chestxray14") -> dict[str, Labels]:
    """The real extraction path: backend.complete -> parse -> to_triplets -> labels_table."""
    ids = list(texts)
    answers = pa.table({"study_id": ids, "answer": [backend.complete(texts[i]).text for i in ids]})
    return answer_labels(answers, backend.vocabulary, convention)


def answer_labels(answers: pa.Table, vocabulary, convention: str) -> dict[str, Labels]:
    """Labels of answered reports (study_id, answer) under one convention's label map."""
    triplets, _ = to_triplets(answers, vocabulary)
    label_map = load_label_map(convention, vocabulary=vocabulary)
    table = labels_table(triplets, label_map, answers.column("study_id").to_pylist())
    return {row.pop("study_id"): row for row in table.to_pylist()}


@dataclass
class Score:
    counts: dict[str, tuple[int, int, int]]  # class -> (tp, fp, fn)

    def prf(self, label: str) -> tuple[float, float, float]:
        return _prf(*self.counts[label])

    def positives(self, label: str) -> int:
        tp, _, fn = self.counts[label]
        return tp + fn

    @property
    def micro(self) -> tuple[float, float, float]:
        return _prf(*(sum(c[i] for c in self.counts.values()) for i in range(3)))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes with a gold positive in the set (others have no F1)."""
        scored = [self.prf(label)[2] for label in self.counts if self.positives(label)]
        return sum(scored) / len(scored) if scored else 0.0


def score(gold: Mapping[str, Labels], predicted: Mapping[str, Labels], policy: str,
          classes: tuple[str, ...] = CLASSES) -> Score:
    positive = POLICIES[policy]
    counts = {}
    for label in classes:
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
