"""Atomic file writes and digests. Every output is written to a temp file in its final
folder and renamed, so a crash leaves either the old file or the new one, never half of one.

Imports nothing from Dagster, so the libraries under the assets (ingestion, training run by
torchrun, evaluation) share these helpers without pulling in the orchestrator."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success rename it over `dest`, else remove it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(dest: Path | str, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_table(table: pa.Table, dest: Path | str, row_group_size: int | None = None) -> Path:
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return Path(dest)


def write_batches(
    batches: Iterable[pa.RecordBatch | pa.Table], schema: pa.Schema, dest: Path | str
) -> int:
    """Stream record batches into one Parquet file (one row group per batch); returns rows."""
    rows = 0
    with atomic_path(dest) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                if batch.num_rows:
                    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                    writer.write_table(table)
                    rows += batch.num_rows
    return rows


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(paths: Iterable[Path | str]) -> str:
    """One digest over several files, independent of the order they are listed in."""
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        digest.update(Path(path).name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
