"""Per-shard ingestion entry points: plain functions the Dagster assets call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from common.storage import write_table
from ingestion.dicom_index import INDEX_SCHEMA, QUARANTINE_SCHEMA, index_dicom, quarantine_row, split_duplicates
from ingestion.identifiers import patient_key
from ingestion.jpg_index import index_jpg_shard
from ingestion.layout import iter_shard_files, parse_report_path, relative_to_root
from ingestion.reports import REPORT_SCHEMA, report_row

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class IndexResult:
    index: pa.Table
    quarantine: pa.Table
    identifier_values: set[str] = field(default_factory=set)  # in memory only, never written
    seconds: float = 0.0


def index_shard(
    root: Path,
    shard: str,
    salt: bytes,
    index_path: Path,
    quarantine_path: Path,
    source_format: str = "dicom",
    metadata_csv: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> IndexResult:
    """Index every image file of one shard and write index + quarantine Parquet atomically."""
    start = time.perf_counter()
    if source_format == "jpg":
        rows, quarantined = index_jpg_shard(root, shard, salt, metadata_csv)
        identifiers: set[str] = set()
    else:
        rows, quarantined, identifiers = [], [], set()
        for count, path in enumerate(iter_shard_files(root, shard, DICOM_SUFFIXES), 1):
            try:
                outcome = index_dicom(path, root, shard, salt)
            except OSError as exc:  # unreadable file (permissions, vanished): still recorded
                reason = f"cannot read: {exc}"
                quarantined.append(quarantine_row(relative_to_root(path, root), shard, "index", reason, None, None))
                continue
            identifiers.update(outcome.identifiers)
            if outcome.row:
                rows.append(outcome.row)
            else:
                quarantined.append(outcome.quarantine)
            if progress:
                progress(count)
    rows, duplicates = split_duplicates(rows)
    index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    quarantine = pa.Table.from_pylist(quarantined + duplicates, schema=QUARANTINE_SCHEMA)
    write_table(index, index_path)
    write_table(quarantine, quarantine_path)
    return IndexResult(index, quarantine, identifiers, time.perf_counter() - start)


def reports_shard(root: Path, shard: str, salt: bytes, out_path: Path) -> pa.Table:
    rows = []
    for path in iter_shard_files(root, shard, (".txt",)):
        try:
            rows.append(report_row(path, root, shard, salt))
        except OSError as exc:
            rows.append(unreadable_report(path, root, shard, salt, exc))
    table = pa.Table.from_pylist(rows, schema=REPORT_SCHEMA)
    write_table(table, out_path)
    return table


def unreadable_report(path: Path, root: Path, shard: str, salt: bytes, exc: Exception) -> dict:
    ids = parse_report_path(path)
    return {
        "study_id": ids.study_id if ids else path.stem,
        "shard": shard,
        "patient_key": patient_key(ids.subject_id if ids else path.stem, salt),
        "source_path": relative_to_root(path, root),
        "text": "", "findings": "", "impression": "", "extraction_text": "", "sections": [],
        "usable": False,
        "flag": f"cannot read: {exc}",
        "text_sha256": None,
    }
