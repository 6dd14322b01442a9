"""Read DICOM headers into index rows; anything unusable becomes a quarantine row with a reason.

A row never carries a direct identifier: the patient becomes a salted key, and the identifier
values seen are returned separately (in memory only) so the caller can scan outputs for leaks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.datadict import keyword_for_tag
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit

from common.storage import file_sha256
from ingestion.dicom_read import NOT_DICOM, read_dicom
from ingestion.failures import concerning, describe_failure, header_value, safe_text
from ingestion.identifiers import IDENTIFIER_KEYWORDS, dataset_identifiers, patient_key
from ingestion.layout import archive_shards, iter_shard_files, parse_image_path, relative_to_root

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
# Colour encodings pydicom turns into RGB (YBR_* through its colour-space conversion, PALETTE
# COLOR through the palette): with colour="grey" they are ingested as their luminance.
COLOUR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
COLOUR_MODES = ("quarantine", "grey")
COLOUR_SETTING = "archive.colour"  # the setting a colour quarantine reason tells the user to change
ID_RULE_SETTING = "archive.id_rule"
# How dicom_id is made: "stem" is MIMIC-CXR's own (globally unique file names), "study_stem"
# `<study>/<stem>` for PACS exports numbering files 1.dcm, 2.dcm in every study, "sop_uid" the
# SOPInstanceUID where even study folders repeat. See `detect_id_rule`.
ID_RULES = ("stem", "study_stem", "sop_uid")
BITS_ALLOCATED = (1, 8, 16, 32)  # what pydicom's decoders produce for image pixels
# A decoder allocates Rows x Columns of the frame it decodes, whatever bytes the file holds: a
# header claiming 65535 x 65535 asks for 8 GiB per 16-bit frame, and one such file would OOM-kill
# its shard. 100 megapixels is 4x the largest real radiographs (MIMIC-CXR up to ~4,300 x 3,500
# = 15 MP; large mammograms ~4,000 x 6,000 = 24 MP), so no real image comes near it.
MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_SETTING = "archive.max_image_pixels"
# The whole Pixel Data decoded (Rows x Columns x frames x samples x bytes), what pydicom may hold
# at once: up to this many bytes per pixel of the frame limit (800 MB at the default: four
# 100-megapixel 16-bit frames, or 26 frames of MIMIC-CXR's size).
MAX_BYTES_PER_LIMIT_PIXEL = 8
FRAME_TAKEN = 0  # the frame a multi-frame file contributes (views of one image: any would do)
# Per-frame functional groups whose values say the frames are different images.
_FRAME_GEOMETRY = (("PlanePositionSequence", "ImagePositionPatient"),
                   ("PlaneOrientationSequence", "ImageOrientationPatient"),
                   ("PixelMeasuresSequence", "PixelSpacing"))
_CINE_KEYWORDS = ("CineRate", "FrameTime", "FrameTimeVector")
_CINE_POINTERS = (0x00181063, 0x00181065)  # FrameTime, FrameTimeVector

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
        ("photometric_interpretation", pa.string()),  # as stored in the file (RGB stays RGB)
        ("transfer_syntax_uid", pa.string()),
        ("has_modality_lut", pa.bool_()),
        ("has_voi", pa.bool_()),
        ("source_format", pa.string()),
        ("source_path", pa.string()),
        ("file_sha256", pa.string()),
        ("file_size", pa.int64()),
        ("pixel_sha256", pa.string()),  # the stored Pixel Data bytes: duplicates under other UIDs
        ("file_mtime_ns", pa.int64()),  # with file_size: an unchanged file is not read again
        ("number_of_frames", pa.int32()),
        ("frame_index", pa.int32()),  # the frame decoded (0-based)
        ("converted_to_grey", pa.bool_()),  # a colour source ingested as luminance (colour="grey")
        ("id_rule", pa.string()),  # how dicom_id was made (ID_RULES)
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
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (keyword, value), in memory only


def check_options(colour: str = "quarantine", id_rule: str = "stem") -> None:
    """A misspelt setting fails the run in one line, before any file is read."""
    if colour not in COLOUR_MODES:
        raise ValueError(f"colour {colour!r}: expected one of {COLOUR_MODES}")
    if id_rule not in ID_RULES:
        raise ValueError(f"id rule {id_rule!r}: expected one of {ID_RULES}")


def index_dicom(path: Path, root: Path, shard: str, salt: bytes, *, colour: str = "quarantine",
                id_rule: str = "stem", max_pixels: int = MAX_IMAGE_PIXELS) -> IndexOutcome:
    """Index one file. Never raises for bad input: any exception its content causes becomes its
    quarantine row (element, exception type, message; identifier values withheld). `colour`:
    "grey" indexes colour images to be decoded as luminance, "quarantine" sets them aside.
    `id_rule`: how dicom_id is made (ID_RULES). `max_pixels`: the largest frame (Rows x Columns)
    indexed, see MAX_IMAGE_PIXELS."""
    check_options(colour, id_rule)
    rel = relative_to_root(path, root)
    stat = path.stat()
    size = stat.st_size
    sha = file_sha256(path) if size else None

    def quarantined(reason: str, identifiers: list[tuple[str, str]] | None = None) -> IndexOutcome:
        return IndexOutcome(quarantine=quarantine_row(rel, shard, "index", reason, sha, size),
                            identifiers=identifiers or [])

    if size == 0:
        return quarantined("empty file (0 bytes)")
    try:
        ds = read_dicom(path)
    except InvalidDicomError:
        return quarantined(NOT_DICOM)
    except Exception as exc:  # truncated headers surface as EOFError/struct errors/etc.
        identifiers = file_identifiers(path)
        return quarantined(f"unreadable DICOM: {describe_failure(exc, identifiers)}", identifiers or [])

    identifiers = dataset_identifiers(ds)
    try:
        problem = pixel_data_problem(ds, colour=colour, max_pixels=max_pixels)
        if problem:
            return quarantined(problem, identifiers)
        row = _index_row(ds, path, rel, shard, salt, stat, sha, id_rule)
    except Exception as exc:  # whatever the header holds, it is this file's problem only
        return quarantined(describe_failure(exc, identifiers), identifiers)
    return IndexOutcome(row=row, identifiers=identifiers)


def _index_row(ds: pydicom.Dataset, path: Path, rel: str, shard: str, salt: bytes, stat: os.stat_result,
               sha: str | None, id_rule: str) -> dict:
    ids = parse_image_path(path)
    subject = ids.subject_id if ids else (header_value(ds, "PatientID", str, "") or rel)
    geometry = image_geometry(ds)
    with concerning("PixelData"):
        pixels = hashlib.sha256(ds.PixelData).hexdigest()
    return {
        "dicom_id": image_id(path, ds, id_rule),
        "study_id": ids.study_id if ids else header_value(ds, "StudyInstanceUID", str, ""),
        "shard": shard,
        "patient_key": patient_key(subject, salt),
        "study_instance_uid": header_value(ds, "StudyInstanceUID", str),
        "series_instance_uid": header_value(ds, "SeriesInstanceUID", str),
        "sop_instance_uid": header_value(ds, "SOPInstanceUID", str),
        "view_position": normalise_view(header_value(ds, "ViewPosition", str, "")),
        "rows": geometry.rows,
        "columns": geometry.columns,
        "bits_allocated": geometry.bits_allocated,
        "bits_stored": geometry.bits_stored,
        "photometric_interpretation": geometry.photometric,
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
        "has_modality_lut": "RescaleSlope" in ds or "ModalityLUTSequence" in ds,
        "has_voi": "WindowCenter" in ds or "VOILUTSequence" in ds,
        "source_format": "dicom",
        "source_path": rel,
        "file_sha256": sha,
        "file_size": stat.st_size,
        "pixel_sha256": pixels,
        "file_mtime_ns": stat.st_mtime_ns,
        "number_of_frames": geometry.frames,
        "frame_index": FRAME_TAKEN,
        "converted_to_grey": geometry.photometric in COLOUR_PHOTOMETRIC,
        "id_rule": id_rule,
    }


def image_id(path: Path, ds: pydicom.Dataset | None, rule: str = "stem") -> str:
    """The dicom_id of the image at `path` under an id rule (see ID_RULES). Raises ValueError
    for a "sop_uid" rule on a file without SOPInstanceUID."""
    ids = parse_image_path(path)
    stem = ids.stem if ids else Path(path).stem
    if rule == "stem":
        return stem
    if rule == "study_stem":
        return f"{ids.study_id if ids else Path(path).parent.name}/{stem}"
    if rule == "sop_uid":
        uid = header_value(ds, "SOPInstanceUID", str, "").strip() if ds is not None else ""
        if not uid:
            raise ValueError("no SOPInstanceUID, which the id rule sop_uid makes the image id")
        return uid
    raise ValueError(f"id rule {rule!r}: expected one of {ID_RULES}")


def detect_id_rule(paths: Iterable[Path | str]) -> str:
    """The id rule for an archive on its first ingestion, from its image file names alone:
    "stem" when no two files share a stem, else "study_stem" when no two files of one study
    do, else "sop_uid". The caller records the rule with the archive and passes it on every
    later run: files arriving later must never change an id already given."""
    stems: set[str] = set()
    study_stems: set[str] = set()
    stem_unique = study_unique = True
    for path in paths:
        stem = image_id(Path(path), None, "stem")
        study_stem = image_id(Path(path), None, "study_stem")
        stem_unique = stem_unique and stem not in stems
        study_unique = study_unique and study_stem not in study_stems
        if not study_unique:
            return "sop_uid"
        stems.add(stem)
        study_stems.add(study_stem)
    return "stem" if stem_unique else "study_stem"


def detect_archive_id_rule(root: Path, suffixes: tuple[str, ...] = (".dcm", ".dicom")) -> str:
    """`detect_id_rule` over every image file of an archive (names only, no file is read)."""
    return detect_id_rule(path for shard in _pnn_shards(root) for path in iter_shard_files(root, shard, suffixes))


def choose_id_rule(configured: str, recorded: str | None, root: Path) -> str:
    """The id rule of a run: the one `recorded` for this archive (ids once given never change),
    else the `configured` one, else ("auto") the one `detect_archive_id_rule` finds. A configured
    rule that contradicts the recorded one is a ValueError naming both and the fix."""
    if recorded:
        if configured not in ("auto", recorded):
            raise ValueError(f"{ID_RULE_SETTING} is {configured!r} but this archive's images were first ingested "
                             f"under the id rule {recorded!r}, and ids once given never change: set "
                             f"{ID_RULE_SETTING}: {recorded} (or auto), or ingest into a new data root")
        return recorded
    return detect_archive_id_rule(root) if configured == "auto" else configured


def _pnn_shards(root: Path) -> list[str]:
    return sorted({shard[:3] for shard in archive_shards(root)})


@dataclass(frozen=True)
class Geometry:
    """The pixel description of a header, every value checked to be a usable number."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    samples: int
    frames: int
    photometric: str


def image_geometry(ds: pydicom.Dataset) -> Geometry:
    """The header's pixel description; a value that is not a number raises HeaderProblem naming
    the element (e.g. NumberOfFrames '1A')."""
    bits_allocated = header_value(ds, "BitsAllocated", _single_int)
    return Geometry(
        rows=header_value(ds, "Rows", _single_int),
        columns=header_value(ds, "Columns", _single_int),
        bits_allocated=bits_allocated,
        bits_stored=header_value(ds, "BitsStored", _single_int, bits_allocated),
        samples=header_value(ds, "SamplesPerPixel", _single_int, 1),
        frames=header_value(ds, "NumberOfFrames", _single_int, 0) or 1,  # 0 or absent: one frame, as pydicom reads it
        photometric=header_value(ds, "PhotometricInterpretation", lambda v: str(v).strip(), ""),
    )


def _single_int(value: object) -> int:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        raise ValueError(f"{len(value)} values where one is expected")  # type: ignore[arg-type]
    return int(value)  # type: ignore[call-overload]


def _floats(value: object) -> list[float]:
    items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [float(v) for v in items]  # type: ignore[union-attr]


def pixel_data_problem(ds: pydicom.Dataset, colour: str = "quarantine",
                       max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why the pixels of `ds` cannot be decoded, or None if they can be. Never raises: a header
    value that breaks the check is itself the reason (element, exception, message), and no
    reason quotes a patient identifier. A frame over `max_pixels` is a reason: checked here,
    from the header, before any decoder allocates it."""
    try:
        problem = _pixel_data_problem(ds, colour, max_pixels)
    except Exception as exc:
        return describe_failure(exc, dataset_identifiers(ds))
    return safe_text(problem, dataset_identifiers(ds)) if problem else None


def _pixel_data_problem(ds: pydicom.Dataset, colour: str, max_pixels: int) -> str | None:
    if "PixelData" not in ds:
        return "no Pixel Data element (7FE0,0010)"
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            return f"missing required element {keyword}"
    geometry = image_geometry(ds)
    photometric = geometry.photometric
    if photometric in COLOUR_PHOTOMETRIC:
        if colour != "grey":
            return f"colour image ({photometric}): set {COLOUR_SETTING}: grey to ingest it as luminance"
    elif photometric not in SUPPORTED_PHOTOMETRIC:
        return (f"PhotometricInterpretation {photometric!r}, expected one of {SUPPORTED_PHOTOMETRIC} "
                f"(or, with {COLOUR_SETTING}: grey, one of {COLOUR_PHOTOMETRIC})")
    problem = _geometry_problem(geometry) or _size_problem(geometry, max_pixels) or _frames_problem(ds, geometry.frames)
    if problem:
        return problem
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
    if tsyntax in _PILLOW_8_BIT_ONLY and decoder.available_plugins == ("pillow",) and geometry.bits_stored > 8:
        return (f"transfer syntax {tsyntax.name} with {geometry.bits_stored}-bit samples: the only installed "
                f"decoder (Pillow) reads 8-bit JPEG only (install pylibjpeg-libjpeg or gdcm)")
    if not tsyntax.is_compressed:
        with concerning("PixelData"):
            actual = len(ds.PixelData)
        expected = _native_length(geometry)
        if actual < expected:
            return (
                f"truncated Pixel Data: {actual} bytes, expected {expected} for "
                f"{geometry.rows}x{geometry.columns}x{geometry.bits_allocated}-bit x {geometry.frames} frame(s)"
            )
    if photometric in SUPPORTED_PHOTOMETRIC:  # the LUTs only apply to grey images
        return _lut_problem(ds)
    return None


_PILLOW_8_BIT_ONLY = (JPEGBaseline8Bit, JPEGExtended12Bit)


def _geometry_problem(g: Geometry) -> str | None:
    for keyword, value in (("Rows", g.rows), ("Columns", g.columns)):
        if not 0 < value <= 0xFFFF:
            return f"{keyword} {value}: an image size must be between 1 and 65535"
    if g.bits_allocated not in BITS_ALLOCATED:
        return f"BitsAllocated {g.bits_allocated}: pydicom decodes {', '.join(map(str, BITS_ALLOCATED))} bits only"
    if not 0 < g.bits_stored <= g.bits_allocated:
        return f"BitsStored {g.bits_stored}: must be between 1 and BitsAllocated ({g.bits_allocated})"
    expected = 3 if g.photometric in COLOUR_PHOTOMETRIC and g.photometric != "PALETTE COLOR" else 1
    if g.samples != expected:
        return f"SamplesPerPixel {g.samples}: {g.photometric} has {expected} sample(s) per pixel"
    if g.frames < 1:
        return f"NumberOfFrames {g.frames}: must be at least 1"
    return None


def _size_problem(g: Geometry, max_pixels: int) -> str | None:
    """Why decoding `g` would allocate more than the limits allow, or None."""
    raise_it = f"raise {MAX_PIXELS_SETTING} if the image is real"
    if g.rows * g.columns > max_pixels:
        return (f"image too large: Rows x Columns {g.rows} x {g.columns} = {g.rows * g.columns:,} pixels per frame, "
                f"over the limit of {max_pixels:,} ({MAX_PIXELS_SETTING}); {raise_it}")
    sample_bytes = -(-g.bits_allocated // 8)  # 1-bit pixels decode to a byte each
    decoded = g.rows * g.columns * g.frames * g.samples * sample_bytes
    if decoded > max_pixels * MAX_BYTES_PER_LIMIT_PIXEL:
        return (f"Pixel Data too large: {g.rows} x {g.columns} x {g.frames} frame(s) x {g.samples} sample(s) x "
                f"{sample_bytes} byte(s) = {decoded:,} bytes decoded, over the limit of "
                f"{max_pixels * MAX_BYTES_PER_LIMIT_PIXEL:,} ({MAX_BYTES_PER_LIMIT_PIXEL} bytes per pixel of "
                f"{MAX_PIXELS_SETTING}); {raise_it}")
    return None


def _native_length(g: Geometry) -> int:
    """Bytes of uncompressed Pixel Data the header promises (YBR_FULL_422 stores two samples
    per pixel; 1-bit pixels are packed)."""
    samples = 2 if g.photometric == "YBR_FULL_422" else g.samples
    return (g.rows * g.columns * g.frames * samples * g.bits_allocated + 7) // 8


def _frames_problem(ds: pydicom.Dataset, frames: int) -> str | None:
    """Why the frames of a multi-frame file are not views of one chest image, or None."""
    if frames < 2:
        return None
    cine = [keyword for keyword in _CINE_KEYWORDS if keyword in ds]
    pointers = header_value(ds, "FrameIncrementPointer", lambda v: [int(t) for t in _as_list(v)], [])
    if cine or any(p in _CINE_POINTERS for p in pointers):
        named = ", ".join(cine) or "FrameIncrementPointer to FrameTime"
        return f"cine loop ({frames} frames, {named}): a sequence over time, not one chest image"
    if pointers:
        varying = ", ".join(keyword_for_tag(p) or f"({p >> 16:04X},{p & 0xFFFF:04X})" for p in pointers)
        return f"multi-frame ({frames} frames) whose frames vary by {varying} (FrameIncrementPointer): not one chest image"
    groups = header_value(ds, "PerFrameFunctionalGroupsSequence", list, [])
    for sequence, keyword in _FRAME_GEOMETRY:
        with concerning(f"PerFrameFunctionalGroupsSequence/{sequence}"):
            values = {_frame_value(item, sequence, keyword) for item in groups}
        if len(values - {None}) > 1:
            return (f"multi-frame ({frames} frames) whose per-frame {keyword} differs ({sequence}): "
                    f"the frames are different images, not views of one chest image")
    return None


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _frame_value(item: pydicom.Dataset, sequence: str, keyword: str) -> tuple[float, ...] | None:
    inner = item.get(sequence)
    if not inner:
        return None
    value = inner[0].get(keyword)
    return None if value is None else tuple(round(v, 3) for v in _floats(value))


def _lut_problem(ds: pydicom.Dataset) -> str | None:
    """Modality and VOI values that pydicom's LUT helpers would fail on at decode time."""
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter"):
        header_value(ds, keyword, _floats)
    widths = header_value(ds, "WindowWidth", _floats, [])
    function = header_value(ds, "VOILUTFunction", lambda v: str(v).strip().upper(), "LINEAR")
    if "WindowCenter" in ds and not widths:
        return "WindowCenter without WindowWidth"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return f"VOILUTFunction {function!r}: expected LINEAR, LINEAR_EXACT or SIGMOID"
    # pydicom's windowing refuses a LINEAR width under 1 and any other width of 0 or less.
    if widths and "VOILUTSequence" not in ds and (min(widths) < 1 if function == "LINEAR" else min(widths) <= 0):
        return f"WindowWidth {min(widths):g}: too narrow for a {function} window"
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


def header_identifiers(root: Path, shard: str) -> set[tuple[str, str]]:
    """(keyword, value) of the identifiers in the headers of one shard (read without pixels),
    for leak checks (`identifier_signatures` takes them as they are)."""
    values: set[tuple[str, str]] = set()
    for path in iter_shard_files(root, shard, (".dcm", ".dicom")):
        values.update(file_identifiers(path) or ())
    return values


def file_identifiers(path: Path) -> list[tuple[str, str]] | None:
    """(keyword, value) of the identifiers in one file's header, or None when not even those
    elements can be read (unreadable files are quarantined by dicom_index)."""
    try:
        ds = read_dicom(path, stop_before_pixels=True, specific_tags=list(IDENTIFIER_KEYWORDS))
    except Exception:
        return None
    return dataset_identifiers(ds)


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


def split_duplicates(rows: list[dict], taken_ids: Mapping[str, str] | None = None,
                     held_ids: Mapping[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """Keep the first row (in path order) of each SOPInstanceUID and of each Pixel Data hash; the
    others come back as quarantine rows naming the file they duplicate. Two files with one UID
    would make joins ambiguous; the same pixels twice would leak one image across splits.
    Likewise for a dicom_id given twice (two studies' 1.dcm under the id rule "stem"), here at
    indexing rather than when training finds two images under one id. `taken_ids` (dicom_id ->
    source_path, from other shards' indexes: see `index_ids`) holds ids given elsewhere;
    `held_ids` (the same, from this shard's previous index) keeps an id with the file that
    had it, whatever the path order of a file arriving later with the same id."""
    kept, duplicates = [], []
    seen = _FirstSeen()
    present = {row["source_path"] for row in rows}
    held = {i: source for i, source in (held_ids or {}).items() if source in present}
    ids: dict[str, str] = {}
    for row in rows:
        dicom_id, source = row["dicom_id"], row["source_path"]
        # The id first: a file refused for its id must not claim its UID and pixels either.
        first = held.get(dicom_id) if held.get(dicom_id, source) != source else ids.get(dicom_id)
        other = (taken_ids or {}).get(dicom_id)
        if first is not None:
            reason = _id_collision(row, first)
        elif other is not None and other != source:
            reason = f"{_id_collision(row, other)} (another shard)"
        else:
            reason = seen.duplicate_reason(row.get("sop_instance_uid"), row.get("pixel_sha256"), source)
        if reason is None:
            kept.append(row)
            ids[dicom_id] = source
        else:
            duplicates.append(quarantine_row(source, row["shard"], "index", reason, row["file_sha256"],
                                             row["file_size"]))
    return kept, duplicates


def _id_collision(row: dict, first: str) -> str:
    # The id itself stays out of the reason: it is the file's own name, already in source_path.
    rule = row.get("id_rule") or "stem"
    better = "study_stem or sop_uid" if rule == "stem" else "sop_uid" if rule == "study_stem" else "study_stem"
    return (f"same dicom_id as {first} under the id rule {rule!r}: this archive repeats file names, "
            f"so the id rule must be {better} (see ingestion.dicom_index.detect_id_rule)")


def index_ids(index_paths: Iterable[Path], id_rule: str | None = None) -> dict[str, str]:
    """dicom_id -> source_path of every row of the given index files (rows made under `id_rule`
    only, when given), for `index_shard(taken_ids=...)`: an id given in one shard is never given
    again in another. Index files without the columns (older indexes) add nothing."""
    taken: dict[str, str] = {}
    for path in index_paths:
        try:
            table = pq.read_table(path, columns=["dicom_id", "source_path", "id_rule"])
        except (OSError, KeyError, pa.ArrowException):  # absent, or written before id rules
            continue
        for dicom_id, source, rule in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if id_rule is None or rule == id_rule:
                taken.setdefault(dicom_id, source)
    return taken


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
