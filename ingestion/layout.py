"""The MIMIC-CXR folder layout: `files/pNN/p<subject>/s<study>/<dicom_id>.dcm` and
`files/pNN/p<subject>/s<study>.txt`. Shards are the `pNN` folders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SHARDS: tuple[str, ...] = tuple(f"p{n}" for n in range(10, 20))

_IMAGE_RE = re.compile(r"(?:^|/)(p\d{2})/p(\d+)/s(\d+)/([^/]+)\.(dcm|jpg|jpeg)$", re.IGNORECASE)
_REPORT_RE = re.compile(r"(?:^|/)(p\d{2})/p(\d+)/s(\d+)\.txt$", re.IGNORECASE)


@dataclass(frozen=True)
class ArchivePath:
    shard: str
    subject_id: str
    study_id: str
    stem: str  # dicom_id for images, "" for reports


def files_root(root: Path | str) -> Path:
    """Accept either the archive folder (holding `files/`) or `files/` itself."""
    root = Path(root)
    return root / "files" if (root / "files").is_dir() else root


def archive_problem(root: Path | str) -> str | None:
    """Why `root` cannot be a MIMIC-CXR-layout archive (one line with the fix), or None."""
    root = Path(root)
    if not root.is_dir():
        return (f"archive root {root} does not exist: set resources.archive.config.root to the folder holding "
                f"files/pNN/ (or run `medfilip demo` to generate the demo corpus)")
    base = files_root(root)
    if not any(p.is_dir() and re.fullmatch(r"p\d{2}", p.name) for p in base.iterdir()):
        return (f"archive root {root} has no pNN folders (expected files/p10 ... files/p19 as in MIMIC-CXR): "
                f"point resources.archive.config.root at the folder that holds them")
    return None


def has_shard(root: Path | str, shard: str) -> bool:
    return (files_root(root) / shard).is_dir()


def iter_shard_files(root: Path | str, shard: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Every file under one shard whose suffix matches, in a stable (sorted) order."""
    base = files_root(root) / shard
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            yield path


def parse_image_path(path: Path | str) -> ArchivePath | None:
    match = _IMAGE_RE.search(Path(path).as_posix())
    if not match:
        return None
    shard, subject, study, stem, _ = match.groups()
    return ArchivePath(shard, subject, study, stem)


def parse_report_path(path: Path | str) -> ArchivePath | None:
    match = _REPORT_RE.search(Path(path).as_posix())
    if not match:
        return None
    shard, subject, study = match.groups()
    return ArchivePath(shard, subject, study, "")


def relative_to_root(path: Path, root: Path | str) -> str:
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.as_posix()
