"""`cxr_images`: decoded, normalised pixels in Parquet, one file per shard, written row group
by row group so memory stays bounded by (row group + tasks in flight), not corpus size."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from common.parallel import ordered_map
from common.storage import atomic_path, previous_output, write_table
from ingestion.decode import decode_dicom, decode_jpeg
from ingestion.dicom_index import MAX_IMAGE_PIXELS, QUARANTINE_SCHEMA, check_options, file_identifiers, quarantine_row
from ingestion.failures import describe_failure

T = TypeVar("T")

MIN_IMAGES_PER_WORKER = 64
# Bump when the pixels a given file decodes to change: stored rows of older decodes are then
# never reused (see `build_cxr_images`, reuse).
DECODER_VERSION = "4"
SETTINGS_KEY = b"medfilip_decode_settings"
# zstd level 1: smaller files than snappy (139 vs 153 KiB per 448 px image) and faster to write.
PIXEL_COMPRESSION, PIXEL_COMPRESSION_LEVEL = "zstd", 1
# Dictionary encoding only where values repeat: tried on the pixels it hashes every image and
# keeps the first megabyte's images in a dictionary page, which readers then have to expand
# (the training loader read row groups 15% slower).
DICTIONARY_COLUMNS = ["dicom_id", "study_id", "patient_key", "view_position", "file_sha256"]
WRITE_OPTIONS = {"compression": PIXEL_COMPRESSION, "compression_level": PIXEL_COMPRESSION_LEVEL,
                 "use_dictionary": DICTIONARY_COLUMNS}

IMAGE_SCHEMA = pa.schema(
    [
        ("dicom_id", pa.string()),
        ("study_id", pa.string()),
        ("patient_key", pa.string()),
        ("view_position", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("pixels", pa.binary()),  # uint8, row-major, height * width bytes
        ("file_sha256", pa.string()),
    ]
)


@dataclass
class ImagesResult:
    images: int
    quarantined: int
    seconds: float
    path: Path
    quarantine_path: Path
    sample: list[np.ndarray]
    reused: int = 0  # rows copied from the previous file: same file sha256, same settings


@dataclass(frozen=True)
class DecodeTask:
    path: str
    source_path: str
    source_format: str
    size: int
    pad_to_square: bool
    meta: tuple  # (dicom_id, study_id, patient_key, view_position, file_sha256)
    reduce_jpeg2000: bool = True
    colour: str = "quarantine"
    indexed_as: tuple[int, int] | None = None  # (size, mtime_ns) of the file when the index checked it
    max_pixels: int = MAX_IMAGE_PIXELS  # the index's size limit, for a file that changed since


# (task, pixels, None), or (task, None, why the file is quarantined)
DecodeOutcome = tuple[DecodeTask, np.ndarray | None, str | None]


def build_cxr_images(
    index: pa.Table,
    root: Path,
    out_path: Path,
    quarantine_path: Path,
    size: int = 448,
    workers: int = 1,
    row_group_size: int = 64,
    pad_to_square: bool = False,
    progress: Callable[[int, int], None] | None = None,
    sample_count: int = 8,
    reduce_jpeg2000: bool = True,
    reuse: bool = True,
    colour: str = "quarantine",
    max_pixels: int = MAX_IMAGE_PIXELS,
    decode: Callable[[DecodeTask], DecodeOutcome] | None = None,
) -> ImagesResult:
    """Decode every indexed image of one shard; undecodable ones go to the quarantine file.
    With `reuse`, an image whose file (sha256) and decode settings are those of a row already in
    `out_path` is copied from there instead of decoded: a shard re-run because new studies
    arrived decodes only the new files, and the output is byte-identical to a full decode.
    `colour="grey"` decodes colour images to luminance (index them with the same setting).
    With `workers` >= 2 decoding runs in worker processes, and a file that kills its decoder
    process (a C decoder's segfault or abort, the OOM killer) is one quarantine row; with
    workers <= 1 it runs in this process, where such a crash takes the step down. `decode`
    (default `decode_task`; a module-level function, for spawned workers) decodes one task."""
    check_options(colour)
    start = time.perf_counter()
    options = {"size": size, "pad_to_square": pad_to_square, "reduce_jpeg2000": reduce_jpeg2000,
               "decoder": DECODER_VERSION}
    if colour != "quarantine":  # only then: outputs written before the setting existed stay reusable
        options["colour"] = colour
    settings = json.dumps(options, sort_keys=True).encode()
    records = index.to_pylist()
    keys = [(rec["dicom_id"], rec["file_sha256"]) for rec in records]
    stored = _reusable_keys(out_path, settings, keys) if reuse else set()
    tasks = (
        DecodeTask(
            path=str(Path(root) / rec["source_path"]),
            source_path=rec["source_path"],
            source_format=rec["source_format"],
            size=size,
            pad_to_square=pad_to_square,
            meta=(rec["dicom_id"], rec["study_id"], rec["patient_key"], rec["view_position"], rec["file_sha256"]),
            reduce_jpeg2000=reduce_jpeg2000,
            colour=colour,
            max_pixels=max_pixels,
            indexed_as=_indexed_as(rec),
        )
        for rec, key in zip(records, keys) if key not in stored
    )
    shard = index.column("shard")[0].as_py() if index.num_rows else ""
    # Starting worker processes costs about a second each: not worth several for a small shard,
    # but one even so when workers were asked for, so that a decoder crash stays one file's.
    processes = min(workers, max(1, (index.num_rows - len(stored)) // MIN_IMAGES_PER_WORKER))
    quarantined: list[dict] = []
    sample: list[np.ndarray] = []
    written = 0

    def outcomes() -> Iterator[tuple[DecodeTask | None, np.ndarray | dict | None, str | None]]:
        """Index order: a stored row (None, row, None) or a decode (task, pixels, error)."""
        decoded = ordered_map(decode or decode_task, tasks, processes, on_crash=crashed_decode, isolate=workers > 1)
        previous = _stored_rows(out_path) if stored else iter(())
        for key in keys:
            if key in stored:  # same order as the index: the next matching stored row
                yield None, next(row for row in previous if (row["dicom_id"], row["file_sha256"]) == key), None
            else:
                yield next(decoded)

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal written
        rows: list[dict] = []
        for done, (task, pixels, error) in enumerate(outcomes(), 1):
            if task is None:
                rows.append(pixels)  # type: ignore[arg-type]
            elif error is not None:
                quarantined.append(quarantine_row(task.source_path, shard, "decode", error, task.meta[4], None))
            else:
                rows.append(image_record(task, pixels))
                if len(sample) < sample_count:
                    sample.append(pixels)
            if len(rows) >= row_group_size:
                written += len(rows)
                yield pa.RecordBatch.from_pylist(rows, schema=IMAGE_SCHEMA)
                rows = []
            if progress:
                progress(done, index.num_rows)
        if rows:
            written += len(rows)
            yield pa.RecordBatch.from_pylist(rows, schema=IMAGE_SCHEMA)

    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, IMAGE_SCHEMA.with_metadata({SETTINGS_KEY: settings}), **WRITE_OPTIONS) as writer:
            write_behind(batches(), lambda batch: writer.write_batch(batch, row_group_size=row_group_size))
    write_table(pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA), quarantine_path)
    return ImagesResult(written, len(quarantined), time.perf_counter() - start, out_path, quarantine_path, sample,
                        reused=len(stored))


def _reusable_keys(out_path: Path, settings: bytes, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """(dicom_id, file sha256) of the rows of the previous `out_path` that can be copied: same
    decode settings, and in the same relative order as in the new index (rows are streamed in
    one pass). Anything unexpected means no reuse, never a wrong row."""
    previous = previous_output(out_path, SETTINGS_KEY, settings)
    if previous is None:
        return set()
    try:
        ids = previous.read(columns=["dicom_id", "file_sha256"])
    except (OSError, pa.ArrowException):
        return set()
    old = list(zip(ids.column("dicom_id").to_pylist(), ids.column("file_sha256").to_pylist()))
    wanted = set(keys)
    common = [key for key in old if key in wanted]
    if len(set(common)) != len(common) or common != [key for key in keys if key in set(common)]:
        return set()
    return set(common)


def _stored_rows(out_path: Path) -> Iterator[dict]:
    """The previous file's rows one row group at a time (bounded memory). Read before the
    atomic rename replaces the file: the open reader keeps the old file's data."""
    previous = pq.ParquetFile(out_path)
    for group in range(previous.num_row_groups):
        yield from previous.read_row_group(group).to_pylist()


def write_behind(batches: Iterator[T], write: Callable[[T], object]) -> None:
    """Write each batch on a second thread while the next one is decoded (pyarrow releases the
    GIL while it compresses); at most one batch waits, so memory stays bounded."""
    with ThreadPoolExecutor(1, thread_name_prefix="parquet-writer") as writer_thread:
        pending: Future | None = None
        for batch in batches:
            if pending is not None:
                pending.result()  # re-raises a write error here, in the caller
            pending = writer_thread.submit(write, batch)
        if pending is not None:
            pending.result()


def _indexed_as(rec: dict) -> tuple[int, int] | None:
    size, mtime = rec.get("file_size"), rec.get("file_mtime_ns")
    return (int(size), int(mtime)) if size is not None and mtime is not None else None


def decode_task(task: DecodeTask) -> DecodeOutcome:
    """Runs in a worker process; a bad file becomes an error string, never an exception."""
    try:
        if task.source_format == "jpg":
            return task, decode_jpeg(task.path, task.size, task.pad_to_square), None
        # The index ran the pixel-data checks on this very file (same size and modification time,
        # as dicom_index's own reuse rule): the decoder need not parse the same header fields again.
        stat = os.stat(task.path)
        checked = task.indexed_as == (stat.st_size, stat.st_mtime_ns)
        return task, decode_dicom(task.path, task.size, task.pad_to_square, reduce_jpeg2000=task.reduce_jpeg2000,
                                  colour=task.colour, checked=checked, max_pixels=task.max_pixels), None
    except Exception as exc:  # the reason names the element concerned and never an identifier value
        identifiers = file_identifiers(Path(task.path)) if task.source_format != "jpg" else ()
        return task, None, f"decode failed: {describe_failure(exc, identifiers)}"


def crashed_decode(task: DecodeTask, why: str) -> DecodeOutcome:
    """The outcome of a file whose decode killed the worker process (`why`: the exit code);
    only the exit code is named, never a header value."""
    return task, None, (f"decode crashed the decoder process ({why}); the file is kept out, "
                        "nothing else of the shard is lost")


def image_record(task: DecodeTask, pixels: np.ndarray) -> dict:
    dicom_id, study_id, pkey, view, sha = task.meta
    return {
        "dicom_id": dicom_id,
        "study_id": study_id,
        "patient_key": pkey,
        "view_position": view,
        "height": int(pixels.shape[0]),
        "width": int(pixels.shape[1]),
        "pixels": pixels.tobytes(),
        "file_sha256": sha,
    }


def contact_sheet_markdown(images: list[np.ndarray], thumb: int = 96, per_row: int = 8) -> str:
    """A small inline PNG grid for Dagster metadata: a person checks orientation and contrast
    at a glance far faster than from statistics."""
    if not images:
        return "_no images_"
    cols = min(per_row, len(images))
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("L", (cols * thumb, rows * thumb), 0)
    for i, arr in enumerate(images):
        tile = Image.fromarray(arr).resize((thumb, thumb), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((i % cols) * thumb, (i // cols) * thumb))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![cxr_images sample](data:image/png;base64,{encoded})"
