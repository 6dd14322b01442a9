"""Read DICOM headers into index rows; anything unusable becomes a quarantine row with a reason.

A row never carries a direct identifier: the patient becomes a salted key, and the identifier
values seen are returned separately (in memory only) so the caller can scan outputs for leaks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from common.storage import file_sha256
from ingestion.dicom_read import NOT_DICOM, read_dicom
from ingestion.identifiers import IDENTIFIER_KEYWORDS, patient_key
from ingestion.layout import iter_shard_files, parse_image_path, relative_to_root

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

INDEX_SCHEMA = pa.schema(
    [
        ("dicom_id", pa.string()),
        ("study_id", pa.string()),
        ("shard", pa.string()),
        ("patient_key", pa.string()),
        ("study_instance_uid", pa.string()),
        ("series_instance_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("view_position", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("bits_allocated", pa.int32()),
        ("bits_stored", pa.int32()),
        ("photometric_interpretation", pa.string()),
        ("transfer_syntax_uid", pa.string()),
        ("has_modality_lut", pa.bool_()),
        ("has_voi", pa.bool_()),
        ("source_format", pa.string()),
        ("source_path", pa.string()),
        ("file_sha256", pa.string()),
        ("file_size", pa.int64()),
        ("pixel_sha256", pa.string()),  # the stored Pixel Data bytes: duplicates under other UIDs
        ("file_mtime_ns", pa.int64()),  # with file_size: an unchanged file is not read again
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_path", pa.string()),
        ("shard", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("file_sha256", pa.string()),
        ("file_size", pa.int64()),
    ]
)


@dataclass
class IndexOutcome:
    row: dict | None = None
    quarantine: dict | None = None
    identifiers: list[str] = field(default_factory=list)


def index_dicom(path: Path, root: Path, shard: str, salt: bytes) -> IndexOutcome:
    """Index one file. Never raises for bad input: problems become a quarantine row."""
    rel = relative_to_root(path, root)
    stat = path.stat()
    size = stat.st_size
    sha = file_sha256(path) if size else None

    def quarantined(reason: str) -> IndexOutcome:
        return IndexOutcome(quarantine=quarantine_row(rel, shard, "index", reason, sha, size))

    if size == 0:
        return quarantined("empty file (0 bytes)")
    try:
        ds = read_dicom(path)
    except InvalidDicomError:
        return quarantined(NOT_DICOM)
    except Exception as exc:  # truncated headers surface as EOFError/struct errors/etc.
        return quarantined(f"unreadable DICOM ({type(exc).__name__}): {exc}")

    identifiers = [str(ds.get(k)) for k in IDENTIFIER_KEYWORDS if ds.get(k) not in (None, "")]
    problem = pixel_data_problem(ds)
    if problem:
        outcome = quarantined(problem)
        outcome.identifiers = identifiers
        return outcome

    ids = parse_image_path(path)
    subject = ids.subject_id if ids else str(ds.get("PatientID", "") or rel)
    view = normalise_view(str(ds.get("ViewPosition", "") or ""))
    row = {
        "dicom_id": ids.stem if ids else path.stem,
        "study_id": ids.study_id if ids else str(ds.get("StudyInstanceUID", "")),
        "shard": shard,
        "patient_key": patient_key(subject, salt),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")) or None,
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) or None,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) or None,
        "view_position": view,
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.get("BitsStored", ds.BitsAllocated)),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "has_modality_lut": "RescaleSlope" in ds or "ModalityLUTSequence" in ds,
        "has_voi": "WindowCenter" in ds or "VOILUTSequence" in ds,
        "source_format": "dicom",
        "source_path": rel,
        "file_sha256": sha,
        "file_size": size,
        "pixel_sha256": hashlib.sha256(ds.PixelData).hexdigest(),
        "file_mtime_ns": stat.st_mtime_ns,
    }
    return IndexOutcome(row=row, identifiers=identifiers)


def pixel_data_problem(ds: pydicom.Dataset) -> str | None:
    """Why the pixels of `ds` cannot be decoded, or None if they can be."""
    if "PixelData" not in ds:
        return "no Pixel Data element (7FE0,0010)"
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            return f"missing required element {keyword}"
    photometric = str(ds.PhotometricInterpretation)
    if photometric not in SUPPORTED_PHOTOMETRIC:
        return f"PhotometricInterpretation {photometric!r}, expected one of {SUPPORTED_PHOTOMETRIC}"
    tsyntax = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""))
    if not tsyntax:
        return "file meta has no TransferSyntaxUID"
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return f"transfer syntax {tsyntax} ({tsyntax.name}) is not supported by pydicom"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return f"transfer syntax {tsyntax.name} has no installed decoder ({missing})"
    if not tsyntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        expected = int(ds.Rows) * int(ds.Columns) * frames * samples * int(ds.BitsAllocated) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            return (
                f"truncated Pixel Data: {actual} bytes, expected {expected} for "
                f"{ds.Rows}x{ds.Columns}x{ds.BitsAllocated}-bit x {frames} frame(s)"
            )
    return None


def normalise_view(view: str) -> str:
    view = view.strip().upper()
    if view in ("LL", "RL", "LAT", "LATERAL"):
        return "LATERAL"
    return view if view in ("PA", "AP") else (view or "UNKNOWN")


def quarantine_row(
    rel: str, shard: str, stage: str, reason: str, sha: str | None, size: int | None
) -> dict:
    return {
        "source_path": rel,
        "shard": shard,
        "stage": stage,
        "reason": reason,
        "file_sha256": sha,
        "file_size": size,
    }


def header_identifiers(root: Path, shard: str) -> set[str]:
    """Identifier values in the headers of one shard (read without pixels), for leak checks."""
    values: set[str] = set()
    for path in iter_shard_files(root, shard, (".dcm", ".dicom")):
        try:
            ds = read_dicom(path, stop_before_pixels=True, specific_tags=list(IDENTIFIER_KEYWORDS))
        except Exception:  # unreadable files are already quarantined by dicom_index
            continue
        values.update(str(ds.get(k)) for k in IDENTIFIER_KEYWORDS if ds.get(k) not in (None, ""))
    return values


class _FirstSeen:
    """The first file (in the order seen) of each SOPInstanceUID and of each Pixel Data hash."""

    def __init__(self) -> None:
        self.uid: dict[str, str] = {}
        self.pixels: dict[str, str] = {}

    def duplicate_reason(self, uid: str | None, pixels: str | None, source: str) -> str | None:
        """Why the file at `source` duplicates one seen before, or None (then it is recorded)."""
        if uid and uid in self.uid:
            return f"duplicate SOPInstanceUID of {self.uid[uid]}"
        if pixels and pixels in self.pixels:
            return f"duplicate pixel data (sha256) of {self.pixels[pixels]}"
        if uid:
            self.uid[uid] = source
        if pixels:
            self.pixels[pixels] = source
        return None


def split_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep the first row (in path order) of each SOPInstanceUID and of each Pixel Data hash; the
    others come back as quarantine rows naming the file they duplicate. Two files with one UID
    would make joins ambiguous; the same pixels twice would leak one image across splits."""
    kept, duplicates = [], []
    seen = _FirstSeen()
    for row in rows:
        reason = seen.duplicate_reason(row.get("sop_instance_uid"), row.get("pixel_sha256"), row["source_path"])
        if reason is None:
            kept.append(row)
        else:
            duplicates.append(quarantine_row(row["source_path"], row["shard"], "index", reason,
                                             row["file_sha256"], row["file_size"]))
    return kept, duplicates


def duplicates_across_shards(index_paths: list[Path]) -> tuple[pa.Table, set[str]]:
    """Quarantine rows (QUARANTINE_SCHEMA) and dicom_ids of the images whose SOPInstanceUID or
    Pixel Data hash an earlier shard already holds (shards in the order given, files in path
    order), naming that file. Each shard's index removed its own duplicates; only here do the
    shards meet, and the same pixels under two patients would put one image on both sides of the
    train/validation split. Reads seven columns, not the rows as dicts (377k images at MIMIC-CXR's
    size)."""
    seen = _FirstSeen()
    duplicates, dropped = [], set()
    columns = ["sop_instance_uid", "pixel_sha256", "source_path", "shard", "file_sha256", "file_size", "dicom_id"]
    for path in index_paths:
        table = pq.read_table(path, columns=columns).sort_by("source_path")
        for uid, pixels, source, shard, sha, size, dicom_id in zip(*(table.column(c).to_pylist() for c in columns)):
            reason = seen.duplicate_reason(uid, pixels, source)
            if reason is not None:
                duplicates.append(quarantine_row(source, shard, "index", f"{reason} (another shard)", sha, size))
                dropped.add(dicom_id)
    return pa.Table.from_pylist(duplicates, schema=QUARANTINE_SCHEMA), dropped
