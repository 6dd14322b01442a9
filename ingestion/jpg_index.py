"""MIMIC-CXR-JPG, the copy most researchers hold: JPEG files in the MIMIC folder layout, with
view position and ids from its metadata CSV, indexed into the same schema as DICOM."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
from PIL import Image, UnidentifiedImageError

from common.storage import file_sha256
from ingestion.dicom_index import normalise_view, quarantine_row
from ingestion.identifiers import patient_key
from ingestion.layout import iter_shard_files, parse_image_path, relative_to_root

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
JPG_TRANSFER_SYNTAX = "jpeg-8bit (MIMIC-CXR-JPG)"


def load_metadata(root: Path, metadata_csv: Path | None) -> dict[str, dict]:
    """dicom_id -> metadata row. Missing CSV means views are unknown, not an error."""
    path = Path(metadata_csv) if metadata_csv else Path(root) / METADATA_CSV
    if not path.exists():
        return {}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                        column_types={"dicom_id": "string"}))
    return {row["dicom_id"]: row for row in table.to_pylist()}


def index_jpg_shard(root: Path, shard: str, salt: bytes, metadata_csv: Path | None) -> tuple[list[dict], list[dict]]:
    metadata = load_metadata(root, metadata_csv)
    rows, quarantined = [], []
    for path in iter_shard_files(root, shard, (".jpg", ".jpeg")):
        rel = relative_to_root(path, root)
        size = path.stat().st_size
        sha = file_sha256(path) if size else None
        ids = parse_image_path(path)
        try:
            with Image.open(path) as image:
                image.verify()  # cheap structural check; decoding happens in cxr_images
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            quarantined.append(quarantine_row(rel, shard, "index", f"not a readable JPEG: {exc}", sha, size))
            continue
        meta = metadata.get(ids.stem if ids else path.stem, {})
        rows.append(
            {
                "dicom_id": ids.stem if ids else path.stem,
                "study_id": ids.study_id if ids else str(meta.get("study_id", "")),
                "shard": shard,
                "patient_key": patient_key(ids.subject_id if ids else str(meta.get("subject_id", rel)), salt),
                "study_instance_uid": None,
                "series_instance_uid": None,
                "sop_instance_uid": ids.stem if ids else path.stem,
                "view_position": normalise_view(str(meta.get("ViewPosition") or "")),
                "rows": int(meta.get("Rows") or height),
                "columns": int(meta.get("Columns") or width),
                "bits_allocated": 8,
                "bits_stored": 8,
                "photometric_interpretation": "MONOCHROME2",
                "transfer_syntax_uid": JPG_TRANSFER_SYNTAX,
                "has_modality_lut": False,
                "has_voi": False,
                "source_format": "jpg",
                "source_path": rel,
                "file_sha256": sha,
                "file_size": size,
                "pixel_sha256": sha,  # the JPEG file is the pixels
                "number_of_frames": 1,
                "frame_index": 0,
                "converted_to_grey": False,  # MIMIC-CXR-JPG is grey already
                "id_rule": "stem",  # MIMIC's own dicom_ids, which its metadata CSV is keyed by
            }
        )
    return rows, quarantined
