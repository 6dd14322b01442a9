"""Study-level labels (ChestX-ray14, CheXpert) from triplets, through ``knowledge/label_maps.yaml``.

A label takes the strongest value any of the study's triplets of its categories gives:
present and certain 1, hedged -1, negated 0; 1 beats -1 beats 0, as the labelling guideline
(docs/labelling_guideline.md) says, so "small left effusion ... no large effusion" is 1.
No triplet leaves the label blank (``None``: not mentioned). A category listed under a label's
``hedged_by`` names it only equivocally (at most -1, negated 0); one under ``suggested_by`` is a
sign that suggests it (at most -1, negated nothing). The map, not the vocabulary, decides the
convention: knowledge/label_maps.yaml says which categories count for which label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from common.paths import KNOWLEDGE_DIR
from common.storage import record_batches
from extraction.vocabulary import Vocabulary, normalize_phrase

PRESENT, UNCERTAIN, ABSENT = 1, -1, 0
_STRENGTH = {None: 0, ABSENT: 1, UNCERTAIN: 2, PRESENT: 3}


class LabelMapError(ValueError):
    """The label map file is malformed or names a category the vocabulary lacks."""


@dataclass(frozen=True)
class LabelMap:
    name: str
    categories: dict[str, tuple[str, ...]]  # label -> vocabulary categories, in column order
    no_finding: str | None = None  # a label derived from the others, first column when set
    no_finding_ignores: tuple[str, ...] = ()
    suggested_by: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> categories
    hedged_by: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> categories
    no_finding_also: tuple[str, ...] = ()  # categories outside the labels that stop no_finding

    @property
    def columns(self) -> list[str]:
        return ([self.no_finding] if self.no_finding else []) + list(self.categories)

    def values_of(self, category: str, value: int) -> list[tuple[str, int]]:
        """(label, value) pairs one triplet of this category gives."""
        named = [(label, value) for label, cats in self.categories.items() if category in cats]
        named += [(label, ABSENT if value == ABSENT else UNCERTAIN)
                  for label, cats in self.hedged_by.items() if category in cats]
        if value == ABSENT:
            return named  # a negated sign does not rule the finding out
        return named + [(label, UNCERTAIN) for label, cats in self.suggested_by.items()
                        if category in cats]


def default_label_maps_path() -> Path:
    return KNOWLEDGE_DIR / "label_maps.yaml"


def load_label_map(name: str, path: Path | str | None = None,
                   vocabulary: Vocabulary | None = None) -> LabelMap:
    """One named map of the file; with a vocabulary, every category it names must exist there."""
    path = Path(path) if path is not None else default_label_maps_path()
    data = yaml.safe_load(path.read_text())
    entry = (data or {}).get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("labels"), dict):
        raise LabelMapError(f"{path}: no label map '{name}' with a 'labels' mapping")
    categories = _label_categories(entry["labels"])
    suggested = _label_categories(entry.get("suggested_by") or {})
    hedged = _label_categories(entry.get("hedged_by") or {})
    for key, group in (("suggested_by", suggested), ("hedged_by", hedged)):
        if set(group) - set(categories):
            raise LabelMapError(f"{path}: {name}: {key} names unknown labels: "
                                f"{sorted(set(group) - set(categories))}")
    also = tuple(normalize_phrase(c) for c in entry.get("no_finding_also") or ())
    if vocabulary is not None:
        known = set(vocabulary.category_names)
        named = {c for group in (categories, suggested, hedged) for cats in group.values() for c in cats}
        unknown = sorted((named | set(also)) - known)
        if unknown:
            raise LabelMapError(f"{path}: {name}: categories not in the vocabulary: {unknown}")
    ignores = tuple(entry.get("no_finding_ignores") or ())
    if set(ignores) - set(categories):
        raise LabelMapError(f"{path}: {name}: no_finding_ignores names unknown labels")
    if also and not entry.get("no_finding"):
        raise LabelMapError(f"{path}: {name}: no_finding_also without a no_finding label")
    return LabelMap(name, categories, entry.get("no_finding"), ignores, suggested, hedged, also)


def _label_categories(raw: Mapping) -> dict[str, tuple[str, ...]]:
    return {str(label): tuple(normalize_phrase(c) for c in cats or []) for label, cats in raw.items()}


def triplet_value(negated: bool, uncertain: bool) -> int:
    return ABSENT if negated else UNCERTAIN if uncertain else PRESENT


def study_labels(triplets: Iterable[Mapping], label_map: LabelMap) -> dict[str, int | None]:
    """Labels of one study from its triplet rows (category, negated, uncertain)."""
    values: dict[str, int | None] = {label: None for label in label_map.categories}
    other_finding = False  # a present or hedged category of no_finding_also
    for triplet in triplets:
        value = triplet_value(triplet["negated"], triplet["uncertain"])
        other_finding |= value != ABSENT and triplet["category"] in label_map.no_finding_also
        for label, value in label_map.values_of(triplet["category"], value):
            if _STRENGTH[value] > _STRENGTH[values[label]]:
                values[label] = value
    if label_map.no_finding:
        findings = [v for label, v in values.items() if label not in label_map.no_finding_ignores]
        found = other_finding or any(v in (PRESENT, UNCERTAIN) for v in findings)
        values = {label_map.no_finding: None if found else PRESENT, **values}
    return values


def labels_table(triplets: pa.Table | Path | Iterable[pa.RecordBatch], label_map: LabelMap,
                 study_ids: Iterable[str]) -> pa.Table:
    """One row per study in ``study_ids`` (a study without triplets still gets its row); the
    triplets are read a batch at a time and kept as small tuples."""
    by_study: dict[str, list[tuple]] = {sid: [] for sid in study_ids}
    for batch in record_batches(triplets, ["study_id", "category", "negated", "uncertain"]):
        for sid, *found in zip(*(column.to_pylist() for column in batch.columns)):
            if sid in by_study:
                by_study[sid].append(tuple(found))
    keys = ("category", "negated", "uncertain")
    rows = [{"study_id": sid, **study_labels((dict(zip(keys, t)) for t in found), label_map)}
            for sid, found in by_study.items()]
    schema = pa.schema([("study_id", pa.string())] + [(c, pa.int8()) for c in label_map.columns])
    return pa.Table.from_pylist(rows, schema=schema)


def report_labels_table(extractions: pa.Table | Path | Iterable[pa.RecordBatch],
                        triplets: pa.Table | Path | Iterable[pa.RecordBatch], label_map: LabelMap) -> pa.Table:
    """One row per report whose answer was read (``llm_extractions`` rows with an answer and no
    parse error); an empty or failed report gets no row, since nothing was said about it."""
    read: dict[str, None] = {}
    for batch in record_batches(extractions, ["study_id", "answer", "parse_error"]):
        mask = pc.and_(pc.is_valid(batch.column(1)), pc.is_null(batch.column(2)))
        read.update(dict.fromkeys(batch.column(0).filter(mask).to_pylist()))
    return labels_table(triplets, label_map, read)


def label_counts(table: pa.Table, label_map: LabelMap) -> list[dict[str, object]]:
    """Per label: how many studies are 1, 0, -1 and blank."""
    counts = []
    for label in label_map.columns:
        values = table.column(label).to_pylist()
        counts.append({"label": label, "1": values.count(PRESENT), "0": values.count(ABSENT),
                       "-1": values.count(UNCERTAIN), "blank": values.count(None)})
    return counts
