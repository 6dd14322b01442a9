"""The MIMIC-CXR folder layout: `files/pNN/p<subject>/s<study>/<dicom_id>.dcm` and
`files/pNN/p<subject>/s<study>.txt`.

A shard (a partition of the ingestion assets) is a prefix of the subject folder name: `p10`
is the whole `p10` folder, `p1004` every subject whose id starts with 1004. Subject ids never
change and new studies of a subject land in its folder, so a study's shard is fixed the day
it arrives: the archive grows by adding shards and files to shards, never by moving them.
`PARTITION_DIGITS` subject-id digits spread MIMIC-CXR's 65,379 subjects over about 1,000
shards of ~380 images each.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SHARDS: tuple[str, ...] = tuple(f"p{n}" for n in range(10, 20))  # the ten pNN folders
PARTITION_DIGITS = 4  # "p1004": 100 shards per pNN folder; 2 gives the pNN folders themselves
SHARD_RE = re.compile(r"p\d{2,8}")

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
    if not _pnn_folders(base):
        return (f"archive root {root} has no pNN folders (expected files/p10 ... files/p19 as in MIMIC-CXR): "
                f"point resources.archive.config.root at the folder that holds them")
    return None


def shard_problem(shard: str) -> str | None:
    """Why `shard` is not a shard name (one line with the fix), or None."""
    if SHARD_RE.fullmatch(shard):
        return None
    return (f"partition {shard!r} is not a shard: use a subject-folder prefix such as p10 (a whole pNN folder) "
            f"or p1004 (subjects 1004xxxx)")


def has_shard(root: Path | str, shard: str) -> bool:
    base = files_root(root)
    return (base / shard).is_dir() if len(shard) == 3 else bool(_subject_dirs(base, shard))


def archive_shards(root: Path | str, digits: int = PARTITION_DIGITS) -> list[str]:
    """The shards holding at least one subject folder, `digits` subject-id digits each. Lists
    folders two levels deep only (65k subject folders for MIMIC-CXR, never its files)."""
    base = files_root(root)
    shards: set[str] = set()
    for folder in _pnn_folders(base):
        with os.scandir(folder) as entries:
            shards.update(e.name[: 1 + digits] for e in entries
                          if e.is_dir() and SHARD_RE.fullmatch(e.name) and e.name.startswith(folder.name))
    return sorted(shards)


def iter_shard_files(root: Path | str, shard: str, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Every file under one shard whose suffix matches, in a stable (sorted) order. A whole
    pNN shard takes everything in the folder, misplaced files included (they get quarantined)."""
    base = files_root(root)
    tops = ([base / shard] if (base / shard).is_dir() else []) if len(shard) == 3 else _subject_dirs(base, shard)
    for top in tops:
        for path in sorted(top.rglob("*")):
            if path.is_file() and path.suffix.lower() in suffixes:
                yield path


def shard_fingerprints(root: Path | str, digits: int = PARTITION_DIGITS) -> dict[str, str]:
    """Per shard, a digest of the studies it holds (report files and study folders, by name
    and, for files, size): a new or replaced study changes its shard's digest and no other.
    Costs one directory listing per subject folder, never a read of an image."""
    base = files_root(root)
    entries: dict[str, list[str]] = {}
    for folder in _pnn_folders(base):
        for subject in _subject_dirs(base, folder.name):
            shard = subject.name[: 1 + digits]
            with os.scandir(subject) as studies:
                entries.setdefault(shard, []).extend(
                    f"{subject.name}/{e.name}:{e.stat().st_size if e.is_file() else _dir_signature(e.path)}"
                    for e in studies)
    return {shard: hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
            for shard, names in sorted(entries.items())}


def _dir_signature(path: str) -> str:
    """A study folder's image names and sizes: an image added to a known study counts too."""
    with os.scandir(path) as images:
        return ",".join(sorted(f"{e.name}={e.stat().st_size}" for e in images if e.is_file()))


def _pnn_folders(base: Path) -> list[Path]:
    """The `pNN` folders under `files/`, sorted."""
    return sorted(p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"p\d{2}", p.name))


def _subject_dirs(base: Path, shard: str) -> list[Path]:
    """Subject folders of one shard, sorted; report files `s<study>.txt` live inside them."""
    folder = base / shard[:3]
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and e.name.startswith(shard))


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


def shard_outputs(folder: Path) -> list[Path]:
    """A per-shard asset's files (`<shard>.parquet`), sorted. Two shards of which one contains
    the other (p10 and p1004) would count the same studies twice: that fails in one line."""
    paths = sorted(p for p in folder.glob("*.parquet") if SHARD_RE.fullmatch(p.stem)) if folder.is_dir() else []
    names = [p.stem for p in paths]
    for name, following in zip(names, names[1:]):
        if following.startswith(name):
            raise ValueError(f"{folder} holds shard {name} and shard {following}, which overlap: delete the files "
                             f"of the granularity no longer in use (see README, Partitions)")
    return paths
