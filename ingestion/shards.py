"""Per-shard ingestion entry points: plain functions the Dagster assets call."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from common.storage import exclusive_lock, previous_output, write_table
from ingestion.dicom_index import (INDEX_SCHEMA, MAX_IMAGE_PIXELS, QUARANTINE_SCHEMA, check_options, index_dicom,
                                   index_ids, quarantine_row, split_duplicates)
from ingestion.failures import describe_failure
from ingestion.identifiers import patient_key
from ingestion.jpg_index import index_jpg_shard
from ingestion.layout import iter_shard_files, parse_report_path, relative_to_root
from ingestion.reports import REPORT_SCHEMA, report_row

DICOM_SUFFIXES = (".dcm", ".dicom")


# Bump when index_dicom writes other values for the same file: older index rows are then
# never reused (see `index_shard`).
INDEXER_VERSION = "2"
_REUSE_KEY = b"medfilip.index_settings"
# Beside the shards' indexes (one folder): held while a shard reads the ids the others gave and
# writes its own, so that two shards indexed at once never both give one new id.
ID_LOCK_NAME = ".dicom_ids.lock"


@dataclass
class IndexResult:
    index: pa.Table
    quarantine: pa.Table
    # (keyword, value) of the identifiers seen, for identifier_signatures; in memory only, never written
    identifier_values: set[tuple[str, str]] = field(default_factory=set)
    seconds: float = 0.0
    reused: int = 0  # rows taken from the previous index: file unchanged (size and mtime)


def index_shard(
    root: Path,
    shard: str,
    salt: bytes,
    index_path: Path,
    quarantine_path: Path,
    source_format: str = "dicom",
    metadata_csv: Path | None = None,
    progress: Callable[[int], None] | None = None,
    reuse: bool = True,
    colour: str = "quarantine",
    id_rule: str = "stem",
    taken_ids: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> IndexResult:
    """Index every image file of one shard and write index + quarantine Parquet atomically.
    With `reuse`, a file whose size and modification time are those of its row in the previous
    index (written with the same salt, indexer and options) keeps that row without being read:
    a shard re-run because a study arrived reads the new files only, not the shard's gigabytes
    again. Identifier values are collected from the files read; reused rows were checked when
    their files were read. Quarantined files are always read again (they may have been repaired).
    No file's content can fail the shard: whatever one file raises is its quarantine row; only
    the archive itself (a folder that cannot be listed) raises.
    `colour` ("quarantine" or "grey") and `id_rule` (ID_RULES; the archive's recorded rule, see
    `detect_id_rule`) go to `index_dicom`, and `max_pixels` (the largest frame indexed). `taken_ids`
    (dicom_id -> source_path of the other shards, `index_ids`) quarantines a file whose id another
    shard already gave. Given as a function, it is called after the files are read, under an
    exclusive lock (ID_LOCK_NAME, beside `index_path`) held until index and quarantine are
    written: two shards indexed at once by processes of one host read each other's ids in turn.
    The files themselves are read outside the lock, so shards still index in parallel."""
    check_options(colour, id_rule)
    start = time.perf_counter()
    options = {"indexer": INDEXER_VERSION, "salt": hashlib.sha256(salt).hexdigest()[:16],
               "colour": colour, "id_rule": id_rule}
    if max_pixels != MAX_IMAGE_PIXELS:  # only then: indexes written before the limit stay reusable
        options["max_pixels"] = max_pixels
    settings = json.dumps(options).encode()
    reused = 0
    identifiers: set[tuple[str, str]] = set()
    if source_format == "jpg":
        rows, quarantined = index_jpg_shard(root, shard, salt, metadata_csv)
    else:
        rows, quarantined = [], []
        previous = _previous_rows(index_path, settings) if reuse else {}
        for count, path in enumerate(iter_shard_files(root, shard, DICOM_SUFFIXES), 1):
            try:
                old = previous.get(relative_to_root(path, root))
                if old is not None and _unchanged(path, old):
                    rows.append(old)
                    reused += 1
                    continue
                outcome = index_dicom(path, root, shard, salt, colour=colour, id_rule=id_rule, max_pixels=max_pixels)
            except OSError as exc:  # unreadable file (permissions, vanished): still recorded
                # The quoted path goes: it is the row's source_path, and its folders may name the patient.
                reason = f"cannot read: {describe_failure(exc, None)}"
                quarantined.append(quarantine_row(relative_to_root(path, root), shard, "index", reason, None, None))
                continue
            except Exception as exc:  # index_dicom quarantines what it can; nothing else may end the shard
                reason = f"indexing failed: {describe_failure(exc, None)}"
                quarantined.append(quarantine_row(relative_to_root(path, root), shard, "index", reason, None, None))
                continue
            identifiers.update(outcome.identifiers)
            if outcome.row:
                rows.append(outcome.row)
            else:
                quarantined.append(outcome.quarantine)
            if progress:
                progress(count)
    with exclusive_lock(index_path.parent / ID_LOCK_NAME):
        # Ids given by the previous run stay with their files, even under reread_all.
        held = index_ids([index_path], id_rule) if source_format != "jpg" else {}
        rows, duplicates = split_duplicates(rows, taken_ids() if callable(taken_ids) else taken_ids, held)
        index = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA.with_metadata({_REUSE_KEY: settings}))
        quarantine = pa.Table.from_pylist(quarantined + duplicates, schema=QUARANTINE_SCHEMA)
        write_table(index, index_path)
        write_table(quarantine, quarantine_path)
    return IndexResult(index, quarantine, identifiers, time.perf_counter() - start, reused)


def _previous_rows(index_path: Path, settings: bytes) -> dict[str, dict]:
    """source_path -> row of the previous index, if it was written with these settings (and
    this schema); anything unexpected means no reuse, never a wrong row."""
    previous = previous_output(index_path, _REUSE_KEY, settings)
    if previous is None or not previous.schema_arrow.remove_metadata().equals(INDEX_SCHEMA):
        return {}
    try:
        return {row["source_path"]: row for row in previous.read().to_pylist()}
    except (OSError, pa.ArrowException):
        return {}


def _unchanged(path: Path, row: dict) -> bool:
    stat = path.stat()
    return row["file_mtime_ns"] is not None and (stat.st_size, stat.st_mtime_ns) == (row["file_size"], row["file_mtime_ns"])


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
