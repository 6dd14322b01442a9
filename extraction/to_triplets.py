"""llm_extractions -> triplets (vocabulary-checked, synonyms folded) and rejects.

A finding whose category, severity or location is not in the vocabulary goes to ``rejects``
with the reason; so does an answer that failed to parse. The same finding stated twice in
one report (FINDINGS and IMPRESSION often repeat) is kept once. The answers are not parsed
again where llm_extractions carries its parse (columns `findings` and `parse_error`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import record_batches
from extraction.parse import ParsedAnswer, ParsedFinding, parse_answer
from extraction.vocabulary import NEGATED_SEVERITY, Vocabulary

PARSE_COLUMNS = ("findings", "parse_error")  # llm_extractions' parse of each answer
TRIPLETS_SCHEMA = pa.schema([
    ("study_id", pa.string()),
    ("finding_index", pa.int32()),
    ("severity", pa.string()),
    ("location", pa.string()),
    ("category", pa.string()),
    ("raw_category", pa.string()),
    ("negated", pa.bool_()),
    ("uncertain", pa.bool_()),
    ("sentence", pa.string()),
])

REJECTS_SCHEMA = pa.schema([
    ("study_id", pa.string()),
    ("severity", pa.string()),
    ("location", pa.string()),
    ("raw_category", pa.string()),
    ("reason", pa.string()),
    ("sentence", pa.string()),
])


def to_triplets(llm_extractions: pa.Table | Path | Iterable[pa.RecordBatch], vocab: Vocabulary
                ) -> tuple[pa.Table, pa.Table]:
    """Triplets and rejects of every answered report, the answers read one batch at a time."""
    triplet_parts, reject_parts = [], []
    for batch in _answer_batches(llm_extractions):
        triplets: list[dict[str, object]] = []
        rejects: list[dict[str, object]] = []
        for row in batch.to_pylist():
            if row["answer"] is not None:  # else a backend error or empty report: visible in llm_extractions
                _answer_triplets(row["study_id"], _parsed(row), vocab, triplets, rejects)
        triplet_parts.append(pa.Table.from_pylist(triplets, schema=TRIPLETS_SCHEMA))
        reject_parts.append(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA))
    return (pa.concat_tables(triplet_parts) if triplet_parts else TRIPLETS_SCHEMA.empty_table(),
            pa.concat_tables(reject_parts) if reject_parts else REJECTS_SCHEMA.empty_table())


def _answer_batches(source: pa.Table | Path | Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batches of study_id, answer and, where the table has them, its parse."""
    if isinstance(source, (pa.Table, str, Path)):
        names = source.column_names if isinstance(source, pa.Table) else pq.ParquetFile(source).schema_arrow.names
        parsed = [c for c in PARSE_COLUMNS if c in names]
        yield from record_batches(source, ["study_id", "answer", *parsed])
        return
    for batch in source:
        yield batch.select(["study_id", "answer", *[c for c in PARSE_COLUMNS if c in batch.schema.names]])


def _parsed(row: dict[str, object]) -> ParsedAnswer:
    if "findings" not in row:  # a table without its parse: read the answer here
        return parse_answer(row["answer"])  # type: ignore[arg-type]
    findings = [ParsedFinding(**f) for f in row["findings"] or []]
    return ParsedAnswer(findings, row.get("parse_error"))  # type: ignore[arg-type]


def _answer_triplets(study_id: str, parsed: ParsedAnswer, vocab: Vocabulary, triplets: list, rejects: list) -> None:
    if parsed.error is not None:
        rejects.append(_reject(study_id, None, None, None, f"parse error: {parsed.error}", None))
    seen: set[tuple[object, ...]] = set()
    for finding in parsed.findings:
        category = vocab.fold_category(finding.category)
        severity = vocab.fold_severity(finding.severity)
        location = vocab.fold_location(finding.location)
        reason = _rejection(category, severity, location, finding)
        if reason:
            rejects.append(_reject(study_id, finding.severity, finding.location, finding.category, reason,
                                   finding.sentence))
            continue
        negated = severity == NEGATED_SEVERITY
        identity = (severity, location, category, negated, finding.uncertain and not negated)
        if identity in seen:
            continue
        seen.add(identity)
        triplets.append({
            "study_id": study_id, "finding_index": len(seen) - 1,
            "severity": severity, "location": location, "category": category,
            "raw_category": finding.category, "negated": negated,
            "uncertain": finding.uncertain and not negated, "sentence": finding.sentence,
        })


def _rejection(category: str | None, severity: str | None, location: str | None,
               finding: object) -> str | None:
    problems = []
    if category is None:
        problems.append(f"unknown category {getattr(finding, 'category')!r}")
    if severity is None:
        problems.append(f"unknown severity {getattr(finding, 'severity')!r}")
    if location is None:
        problems.append(f"unknown location {getattr(finding, 'location')!r}")
    return "; ".join(problems) or None


def _reject(study_id: str, severity: str | None, location: str | None, raw_category: str | None,
            reason: str, sentence: str | None) -> dict[str, object]:
    return {"study_id": study_id, "severity": severity, "location": location,
            "raw_category": raw_category, "reason": reason, "sentence": sentence}


@dataclass
class TripletSummary:
    """What the triplets asset reports and checks."""

    answered: int  # reports with an answer
    with_triplets: int  # reports that yield at least one finding
    findings: int  # triplets + rejects
    outside_vocabulary: list[dict]  # rejects for an unknown category
    positive: Counter  # category -> present findings
    negated: Counter  # category -> negated findings
    uncertain: int
    reject_reasons: Counter

    @property
    def share_with_triplets(self) -> float:
        return self.with_triplets / self.answered if self.answered else 0.0

    @property
    def outside_rate(self) -> float:
        return len(self.outside_vocabulary) / self.findings if self.findings else 0.0


def answered_reports(llm_extractions: pa.Table | Path | Iterable[pa.RecordBatch]) -> int:
    return sum(batch.num_rows - batch.column(0).null_count for batch in record_batches(llm_extractions, ["answer"]))


def summarise_triplets(answered: int, triplets: pa.Table, rejects: pa.Table) -> TripletSummary:
    """`answered`: reports with an answer (`answered_reports`)."""
    categories = triplets.column("category").to_pylist()
    negated = triplets.column("negated").to_pylist()
    reject_rows = rejects.to_pylist()
    return TripletSummary(
        answered=answered,
        with_triplets=len(set(triplets.column("study_id").to_pylist())),
        findings=triplets.num_rows + len(reject_rows),
        outside_vocabulary=[r for r in reject_rows if "unknown category" in (r["reason"] or "")],
        positive=Counter(c for c, n in zip(categories, negated) if not n),
        negated=Counter(c for c, n in zip(categories, negated) if n),
        uncertain=sum(triplets.column("uncertain").to_pylist()),
        reject_reasons=Counter(r["reason"] for r in reject_rows),
    )

