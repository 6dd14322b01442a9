"""Atomic file writes and digests. Every output is written to a temp file in its final
folder and renamed, so a crash leaves either the old file or the new one, never half of one.

Imports nothing from Dagster, so the libraries under the assets (ingestion, training run by
torchrun, evaluation) share these helpers without pulling in the orchestrator."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(dest: Path | str, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success rename it over `dest`, else remove it.

    The temp name carries the writer's pid, so the next write of `dest` removes what a killed
    writer left behind without touching a live writer's file. The result gets `mode`, by default
    the permissions of a plain `open()` (umask applied), not mkstemp's 0600."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temps(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block: another
    process entering the same lock waits until the block ends. flock(2): the kernel releases it
    when the holder dies, so a killed run never leaves the lock taken. It serialises the processes
    of one host; between machines only where their shared filesystem carries flock (see
    docs/operations.md)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def write_bytes(dest: Path | str, data: bytes, mode: int | None = None) -> Path:
    with atomic_path(dest, mode) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: Path | str, text: str, mode: int | None = None) -> Path:
    return write_bytes(dest, text.encode("utf-8"), mode)


def write_table(table: pa.Table, dest: Path | str, row_group_size: int | None = None) -> Path:
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return Path(dest)


def record_batches(source: pa.Table | Path | str | Iterable[pa.RecordBatch], columns: list[str],
                   batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """`columns` of a table, a Parquet file or batches, a bounded number of rows at a time: a
    stage over a whole archive's rows then holds one batch of Python objects, not all of them."""
    if isinstance(source, pa.Table):
        yield from source.select(columns).to_batches(max_chunksize=batch_size)
    elif isinstance(source, (str, Path)):
        yield from pq.ParquetFile(source).iter_batches(batch_size=batch_size, columns=columns)
    else:
        for batch in source:
            yield batch.select(columns)


def previous_output(path: Path | str, key: bytes, settings: bytes) -> pq.ParquetFile | None:
    """The Parquet file at `path` if it was written with `settings` under schema metadata `key`
    (what a stage stores to know which rows it may reuse), else None: missing, unreadable or
    written otherwise means nothing is reused, never a wrong row."""
    try:
        previous = pq.ParquetFile(path)
    except (OSError, pa.ArrowException):
        return None
    return previous if (previous.schema_arrow.metadata or {}).get(key) == settings else None


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def _remove_orphaned_temps(dest: Path) -> None:
    """Delete `.<name>.<pid>.*.tmp` siblings whose writer process no longer exists."""
    for tmp in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        pid = tmp.name[len(dest.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine still exists (someone else's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

