"""The semantic similarity matrix (SSM), materialised once so training never runs the encoder.

The paper's soft target for image b and batch text j is
    target[b, j] = max over texts i of image b of [cat(i) == cat(j)] * cos(e_i, e_j)
Only same-category pairs can be non-zero, so the matrix is stored as one dense square block per
category ("group"), concatenated row-major in a single flat .npy (memory-mapped on load):

    ssm_values.npy     flat float32/float16: block 0 rows, then block 1 rows, ...
    ssm_index.parquet  text_id -> (block, row), plus the text's head for plots
    ssm_blocks.parquet block -> (group, size, offset into ssm_values.npy)
    ssm.json           manifest, written last: its presence means the directory is complete

Blocks are built tile by tile from the upper triangle and mirrored, so they are exactly symmetric
and memory stays bounded by one tile however large a category gets.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from common.storage import atomic_path, write_bytes, write_table
from common.plots import pyplot

VALUES_FILE = "ssm_values.npy"
INDEX_FILE = "ssm_index.parquet"
BLOCKS_FILE = "ssm_blocks.parquet"
MANIFEST_FILE = "ssm.json"
FORMAT_VERSION = 1
TILE_ROWS = 4096  # 4096 x 4096 float32 tile = 64 MiB: the build's peak working memory

CheckResult = tuple[bool, dict]


@dataclass(frozen=True)
class SSMSummary:
    out_dir: str
    n_texts: int
    n_blocks: int
    n_values: int  # stored similarities (sum of block sizes squared)
    dense_values: int  # n_texts squared, what a dense matrix would hold
    bytes_on_disk: int
    dtype: str
    separate_negations: bool
    largest_block_group: str
    largest_block_size: int
    max_abs_quantisation_error: float  # stored value vs the float32 cosine; 0 for float32
    build_seconds: float
    digest: str  # sha256 over values, index and blocks files

    def metadata(self) -> dict:
        return asdict(self)


def build_ssm(
    texts: pa.Table,
    embeddings: np.ndarray,
    out_dir: Path | str,
    separate_negations: bool = False,
    dtype: str = "float32",
) -> SSMSummary:
    """Materialise the SSM of `texts` (columns text_id, category, negated; optional text).

    `embeddings` rows are aligned with the rows of `texts` and L2-normalised (embed_texts output).
    separate_negations=False is the paper: "no effusion" and "large effusion" share a category.
    True puts negated mentions in their own group ("no effusion"), zero against positive ones.
    """
    started = time.perf_counter()
    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    text_ids = np.asarray(texts.column("text_id").to_numpy(), dtype=np.int64)
    if len(text_ids) != len(embeddings):
        raise ValueError(f"{len(text_ids)} texts but {len(embeddings)} embeddings")
    if len(np.unique(text_ids)) != len(text_ids) or (len(text_ids) and text_ids.min() < 0):
        raise ValueError("text_id must be unique and non-negative")
    groups = group_names(
        texts.column("category").to_pylist(), texts.column("negated").to_pylist(), separate_negations
    )
    blocks = _plan_blocks(text_ids, groups)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_FILE
    manifest_path.unlink(missing_ok=True)  # the directory is incomplete until the manifest returns

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_values = int(sum(len(rows) ** 2 for _, rows in blocks))
    error = _write_values(out_dir / VALUES_FILE, embeddings, blocks, n_values, np_dtype)
    labels = _text_heads(texts)
    _write_index(out_dir, text_ids, blocks, labels)
    digest = _digest_files([out_dir / VALUES_FILE, out_dir / INDEX_FILE, out_dir / BLOCKS_FILE])
    largest = max(blocks, key=lambda b: len(b[1])) if blocks else ("", np.empty(0))
    summary = SSMSummary(
        out_dir=str(out_dir),
        n_texts=len(text_ids),
        n_blocks=len(blocks),
        n_values=n_values,
        dense_values=len(text_ids) ** 2,
        bytes_on_disk=sum((out_dir / f).stat().st_size for f in (VALUES_FILE, INDEX_FILE, BLOCKS_FILE)),
        dtype=np_dtype.name,
        separate_negations=separate_negations,
        largest_block_group=largest[0],
        largest_block_size=len(largest[1]),
        max_abs_quantisation_error=error,
        build_seconds=time.perf_counter() - started,
        digest=digest,
    )
    write_bytes(manifest_path, json.dumps({"format_version": FORMAT_VERSION, **summary.metadata()}, indent=2).encode())
    return summary


class SSM:
    """A materialised SSM: block lookups by text_id. Values are memory-mapped, not read whole."""

    def __init__(self, directory: Path, manifest: dict, values: np.ndarray, index: pa.Table, blocks: pa.Table):
        self.directory = directory
        self.manifest = manifest
        self.values = values
        self.separate_negations = bool(manifest["separate_negations"])
        self.groups: list[str] = blocks.column("group").to_pylist()
        self.block_size = np.asarray(blocks.column("size").to_numpy(), dtype=np.int64)
        self.block_offset = np.asarray(blocks.column("offset").to_numpy(), dtype=np.int64)
        self.text_ids = np.asarray(index.column("text_id").to_numpy(), dtype=np.int64)
        self.labels: dict[int, str] = dict(zip(self.text_ids.tolist(), index.column("label").to_pylist()))
        # Dense text_id -> (block, row) arrays: one fancy-index per lookup instead of a dict walk.
        size = int(self.text_ids.max()) + 1 if len(self.text_ids) else 0
        self._block_of = np.full(size, -1, dtype=np.int64)
        self._row_of = np.full(size, -1, dtype=np.int64)
        self._block_of[self.text_ids] = index.column("block").to_numpy()
        self._row_of[self.text_ids] = index.column("row").to_numpy()

    @classmethod
    def load(cls, directory: Path | str, mmap: bool = True) -> SSM:
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.exists():
            raise FileNotFoundError(f"{directory}: no {MANIFEST_FILE}; the SSM was never completed")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
        values = np.load(directory / VALUES_FILE, mmap_mode="r" if mmap else None)
        if values.shape != (manifest["n_values"],):
            raise ValueError(f"{directory / VALUES_FILE}: {values.shape} values, manifest says {manifest['n_values']}")
        return cls(directory, manifest, values, pq.read_table(directory / INDEX_FILE), pq.read_table(directory / BLOCKS_FILE))

    @property
    def n_texts(self) -> int:
        return len(self.text_ids)

    def block(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(text_ids in row order, square float32 block) of one group."""
        if group not in self.groups:
            raise KeyError(f"no SSM block for {group!r}; groups: {self.groups}")
        b = self.groups.index(group)
        n, offset = int(self.block_size[b]), int(self.block_offset[b])
        members = self.text_ids[self._block_of[self.text_ids] == b]
        members = members[np.argsort(self._row_of[members])]
        return members, np.asarray(self.values[offset : offset + n * n], dtype=np.float32).reshape(n, n)

    def pairwise(self, row_ids: Sequence[int] | np.ndarray, col_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """[len(row_ids), len(col_ids)] float32: the same-group cosine, 0 across groups."""
        rows, cols = self._locate(row_ids), self._locate(col_ids)
        out = np.zeros((len(rows), len(cols)), dtype=np.float32)
        block_r, block_c = self._block_of[rows], self._block_of[cols]
        # Only same-group pairs are non-zero: gather one rectangle per group present in both.
        order_r, order_c = np.argsort(block_r, kind="stable"), np.argsort(block_c, kind="stable")
        groups_r, start_r, count_r = np.unique(block_r[order_r], return_index=True, return_counts=True)
        groups_c, start_c, count_c = np.unique(block_c[order_c], return_index=True, return_counts=True)
        _, in_r, in_c = np.intersect1d(groups_r, groups_c, assume_unique=True, return_indices=True)
        for gr, gc in zip(in_r.tolist(), in_c.tolist()):
            b = int(groups_r[gr])
            pos_r = order_r[start_r[gr] : start_r[gr] + count_r[gr]]
            pos_c = order_c[start_c[gc] : start_c[gc] + count_c[gc]]
            flat = self.block_offset[b] + self._row_of[rows[pos_r]][:, None] * self.block_size[b] + self._row_of[cols[pos_c]][None, :]
            out[np.ix_(pos_r, pos_c)] = self.values[flat]
        return out

    def _locate(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        known = (ids >= 0) & (ids < len(self._block_of))
        known[known] = self._block_of[ids[known]] >= 0
        if not known.all():
            raise KeyError(f"text_ids not in the SSM: {sorted(set(ids[~known].tolist()))[:10]}")
        return ids


def batch_targets(
    image_text_ids: Sequence[Sequence[int]],
    ssm: SSM,
    column_text_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """[B, N] float32 soft targets: target[b, j] = max over texts i of image b of S[i, j].

    Columns default to all texts of the batch concatenated in image order; the training loop may
    pass one sampled text per image instead (N == B).
    """
    lengths = np.fromiter((len(ids) for ids in image_text_ids), dtype=np.int64, count=len(image_text_ids))
    if len(lengths) == 0:
        raise ValueError("empty batch")
    if (lengths == 0).any():
        raise ValueError(f"images {np.flatnonzero(lengths == 0).tolist()} have no texts")
    flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in image_text_ids])
    columns = flat if column_text_ids is None else np.asarray(column_text_ids, dtype=np.int64)
    # Batches repeat texts ("no finding", common findings): look up each distinct pair once.
    uniq_rows, row_inverse = np.unique(flat, return_inverse=True)
    uniq_cols, col_inverse = np.unique(columns, return_inverse=True)
    sims = ssm.pairwise(uniq_rows, uniq_cols)  # [distinct batch texts, distinct columns]
    # Max over each image's texts as K row gathers (K = most texts of one image): padding with the
    # image's first text leaves the max unchanged, and this beats ufunc.reduceat along axis 0.
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    slot = np.minimum(np.arange(lengths.max())[None, :], lengths[:, None] - 1)
    local_rows = row_inverse[starts[:, None] + slot]  # [B, K]
    per_image = sims[local_rows[:, 0]]
    for k in range(1, local_rows.shape[1]):
        np.maximum(per_image, sims[local_rows[:, k]], out=per_image)
    return torch.from_numpy(per_image[:, col_inverse]).to(device or "cpu")


def ssm_targets_fn(ssm: SSM) -> Callable[[Sequence[Sequence[int]], Sequence[int]], torch.Tensor]:
    """The training loop's `targets_fn` over one SSM (a partial, so it pickles)."""
    return partial(_targets_by_columns, ssm)


def _targets_by_columns(ssm: SSM, image_text_ids: Sequence[Sequence[int]],
                        column_text_ids: Sequence[int]) -> torch.Tensor:
    return batch_targets(image_text_ids, ssm, column_text_ids)


def group_names(categories: Sequence[str], negated: Sequence[bool], separate_negations: bool) -> list[str]:
    """The SSM group of each text: its category, or "no <category>" for negations when separated."""
    if not separate_negations:
        return list(categories)
    return [f"no {c}" if n else c for c, n in zip(categories, negated)]


# --- checks: (passed, metadata) for asset checks and tests ----------------------------------


def check_symmetric(ssm: SSM) -> CheckResult:
    worst = 0.0
    for group in ssm.groups:
        _, block = ssm.block(group)
        worst = max(worst, float(np.abs(block - block.T).max()) if block.size else 0.0)
    return worst == 0.0, {"max_abs_asymmetry": worst, "blocks": len(ssm.groups)}


def check_unit_diagonal(ssm: SSM) -> CheckResult:
    worst = 0.0
    for group in ssm.groups:
        _, block = ssm.block(group)
        worst = max(worst, float(np.abs(np.diagonal(block) - 1.0).max()) if block.size else 0.0)
    return worst == 0.0, {"max_abs_diagonal_error": worst}


def check_value_range(ssm: SSM) -> CheckResult:
    low, high, finite = np.inf, -np.inf, True
    for start in range(0, len(ssm.values), 1 << 24):  # chunks: the values may be a large memmap
        chunk = np.asarray(ssm.values[start : start + (1 << 24)], dtype=np.float32)
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        finite = finite and bool(np.isfinite(chunk).all())
    passed = finite and -1.0 <= low and high <= 1.0
    return passed, {"min": low, "max": high, "finite": finite}


def check_zero_across_categories(ssm: SSM, texts: pa.Table | None = None, samples: int = 2000, seed: int = 0) -> CheckResult:
    """Blocks partition the texts, each text sits in the block of its own group (when `texts` is
    given), and sampled cross-group lookups are exactly zero."""
    problems: list[str] = []
    if int(ssm.block_size.sum()) != ssm.n_texts:
        problems.append(f"block sizes sum to {int(ssm.block_size.sum())}, not {ssm.n_texts} texts")
    if len(set(ssm.groups)) != len(ssm.groups):
        problems.append("a group has two blocks")
    if texts is not None:
        expected = group_names(texts.column("category").to_pylist(), texts.column("negated").to_pylist(), ssm.separate_negations)
        ids = np.asarray(texts.column("text_id").to_numpy(), dtype=np.int64)
        actual = [ssm.groups[b] for b in ssm._block_of[ssm._locate(ids)]]
        wrong = sum(a != e for a, e in zip(actual, expected))
        if wrong:
            problems.append(f"{wrong} texts sit in another group's block")
    rng = np.random.default_rng(seed)
    a = rng.choice(ssm.text_ids, size=samples) if ssm.n_texts else np.empty(0, dtype=np.int64)
    b = rng.choice(ssm.text_ids, size=samples) if ssm.n_texts else np.empty(0, dtype=np.int64)
    cross = ssm._block_of[a] != ssm._block_of[b]
    cross_values = np.array([ssm.pairwise([i], [j])[0, 0] for i, j in zip(a[cross][:200], b[cross][:200])])
    nonzero = int(np.count_nonzero(cross_values))
    if nonzero:
        problems.append(f"{nonzero} cross-group pairs are non-zero")
    return not problems, {"problems": problems, "cross_pairs_sampled": int(len(cross_values))}


def run_checks(ssm: SSM, texts: pa.Table | None = None) -> dict[str, CheckResult]:
    return {
        "symmetric": check_symmetric(ssm),
        "unit_diagonal": check_unit_diagonal(ssm),
        "value_range": check_value_range(ssm),
        "zero_across_categories": check_zero_across_categories(ssm, texts),
    }


def plot_block_heatmap(ssm: SSM, category: str, path: Path | str, max_labels: int = 40) -> Path:
    """PNG heatmap of one group's block, labelled with the text heads when they fit."""
    plt = pyplot()

    members, block = ssm.block(category)
    n = len(members)
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * n, 16), min(3.5 + 0.25 * n, 15)))
    image = ax.imshow(block, vmin=-1, vmax=1, cmap="RdBu_r")
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_title(f"SSM block: {category} ({n} texts)")
    if n <= max_labels:
        labels = [ssm.labels.get(int(t), str(t)) for t in members]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


# --- helpers -------------------------------------------------------------------------------


def _plan_blocks(text_ids: np.ndarray, groups: list[str]) -> list[tuple[str, np.ndarray]]:
    """(group, positions into texts ordered by text_id) per group, groups in name order."""
    order = np.argsort(text_ids, kind="stable")
    by_group: dict[str, list[int]] = {}
    for position in order.tolist():
        by_group.setdefault(groups[position], []).append(position)
    return [(g, np.asarray(by_group[g], dtype=np.int64)) for g in sorted(by_group)]


def _write_values(path: Path, embeddings: np.ndarray, blocks: list[tuple[str, np.ndarray]], n_values: int, dtype: np.dtype) -> float:
    """Stream every block into a memory-mapped .npy tile by tile; returns the max quantisation error."""
    worst = 0.0
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_values,))
        offset = 0
        for _, positions in blocks:
            n = len(positions)
            block = out[offset : offset + n * n].reshape(n, n)
            vectors = embeddings[positions]
            for i in range(0, n, TILE_ROWS):
                for j in range(i, n, TILE_ROWS):
                    tile = np.clip(vectors[i : i + TILE_ROWS] @ vectors[j : j + TILE_ROWS].T, -1.0, 1.0)
                    if i == j:
                        tile = (tile + tile.T) / 2  # the diagonal tile must be exactly symmetric too
                        np.fill_diagonal(tile, 1.0)  # a text scores 1 with itself, by definition
                    stored = tile.astype(dtype)
                    worst = max(worst, float(np.abs(stored.astype(np.float32) - tile).max()))
                    block[i : i + TILE_ROWS, j : j + TILE_ROWS] = stored
                    block[j : j + TILE_ROWS, i : i + TILE_ROWS] = stored.T
            offset += n * n
        out.flush()
        del out
    return worst


def _write_index(out_dir: Path, text_ids: np.ndarray, blocks: list[tuple[str, np.ndarray]], labels: list[str]) -> None:
    index_rows: dict[str, list] = {"text_id": [], "block": [], "row": [], "label": []}
    sizes, offsets, offset = [], [], 0
    for b, (_, positions) in enumerate(blocks):
        index_rows["text_id"].extend(text_ids[positions].tolist())
        index_rows["block"].extend([b] * len(positions))
        index_rows["row"].extend(range(len(positions)))
        index_rows["label"].extend(labels[p] for p in positions.tolist())
        sizes.append(len(positions))
        offsets.append(offset)
        offset += len(positions) ** 2
    index = pa.table(
        {
            "text_id": pa.array(index_rows["text_id"], pa.int32()),
            "block": pa.array(index_rows["block"], pa.int32()),
            "row": pa.array(index_rows["row"], pa.int32()),
            "label": pa.array(index_rows["label"], pa.string()),
        }
    ).sort_by("text_id")
    block_table = pa.table(
        {
            "block": pa.array(range(len(blocks)), pa.int32()),
            "group": pa.array([g for g, _ in blocks], pa.string()),
            "size": pa.array(sizes, pa.int32()),
            "offset": pa.array(offsets, pa.int64()),
        }
    )
    write_table(index, out_dir / INDEX_FILE)
    write_table(block_table, out_dir / BLOCKS_FILE)


def _text_heads(texts: pa.Table) -> list[str]:
    """The "<severity> <location> <category>" part of each text, or its id when texts are absent."""
    if "text" not in texts.column_names:
        return [str(t) for t in texts.column("text_id").to_pylist()]
    return [t.split(". ", 1)[0] for t in texts.column("text").to_pylist()]


def _digest_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
