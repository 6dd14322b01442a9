"""Streams training batches from `cxr_images` Parquet shards joined with `image_texts`.

The order of samples is a pure function of (seed, epoch, data_lanes), never of the number of
processes or loader workers, so that a 2-GPU run sees the same global batches as a 1-GPU run and a
resumed run continues exactly where it stopped:
- the unit of reading is a Parquet row group; each epoch the units are shuffled and dealt to
  `data_lanes` lanes; within a lane, rows of `shuffle_window` consecutive units are mixed;
- global batch k = the k-th `batch_size` rows of every lane, lanes in order; DDP rank r keeps the
  contiguous block of lanes r*L/W .. (r+1)*L/W - 1 (data_lanes must divide by world size);
- every lane stops after the same number of batches (the shortest lane), so all ranks step equally;
- loader workers share a rank's batches round-robin (batch k -> worker k % n), which is exactly
  the order in which torch's DataLoader collects them;
- the sampled text and the augmentation of an image are drawn from an RNG keyed by
  (seed, epoch, dicom_id). The sampled text is one of the image's texts, uniformly, or
  with `text_sampling="positive_first"` one of its non-negated texts when it has any: then the
  batch's columns are mostly findings that are present, which is what zero-shot prompts ask about;
- with `batch_layout="all_texts"` (the published code) no text is drawn: every text of every image
  is a column, image by image in text_id order, so the batch has sum T columns, repeats included.
Only the dicom_id column of every row group is read up front; pixels are read batch by batch.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_COLUMNS = ["dicom_id", "height", "width", "pixels"]
TextSampling = Literal["uniform", "positive_first"]
BatchLayout = Literal["one_text", "all_texts"]


@dataclass
class Batch:
    images: torch.Tensor  # [B, 1, S, S] float32 in [0, 1]
    tokens: torch.Tensor  # [T, L] token ids of the batch's texts (T = B, or sum T with all_texts)
    text_ids: torch.Tensor  # [T] the columns of the target matrix
    image_text_ids: list[list[int]]  # all texts of each image (the rows of the target matrix)
    dicom_ids: list[str]

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.tokens.to(device, non_blocking=non_blocking),
            self.text_ids.to(device),
            self.image_text_ids,
            self.dicom_ids,
        )

    def __len__(self) -> int:
        return len(self.dicom_ids)


@dataclass(frozen=True)
class Augmentation:
    """Radiograph-safe: small affine and intensity jitter, never a flip (laterality matters)."""

    rotation_deg: float = 7.0
    scale: tuple[float, float] = (0.92, 1.08)
    translate_frac: float = 0.05
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.85, 1.15)


@dataclass(frozen=True)
class Unit:
    """One row group of one shard, restricted to the rows of the chosen split."""

    path: str
    row_group: int
    rows: tuple[int, ...]
    dicom_ids: tuple[str, ...]


@dataclass
class SplitIndex:
    units: list[Unit]
    text_ids: dict[str, list[int]] = field(repr=False)  # dicom_id -> its text ids

    @property
    def num_images(self) -> int:
        return sum(len(u.rows) for u in self.units)


def build_split_index(images_dir: str | Path, image_texts_path: str | Path, split: str) -> SplitIndex:
    """Row groups of every shard under `images_dir` with the rows whose image is in `split`."""
    table = pq.read_table(image_texts_path, columns=["dicom_id", "split", "text_ids"], filters=[("split", "==", split)])
    text_ids = dict(zip(table.column("dicom_id").to_pylist(), table.column("text_ids").to_pylist()))
    units = []
    for path in sorted(Path(images_dir).rglob("*.parquet")):
        shard = pq.ParquetFile(path)
        for row_group in range(shard.num_row_groups):
            ids = shard.read_row_group(row_group, columns=["dicom_id"]).column("dicom_id").to_pylist()
            rows = [i for i, dicom_id in enumerate(ids) if text_ids.get(dicom_id)]
            if rows:
                units.append(Unit(str(path), row_group, tuple(rows), tuple(ids[i] for i in rows)))
    return SplitIndex(units, text_ids)


class TextTokens:
    """Token ids of every training text, tokenised once, looked up by text_id."""

    def __init__(self, texts_path: str | Path, tokenizer: Callable[[Sequence[str]], torch.Tensor]):
        table = pq.read_table(texts_path, columns=["text_id", "text"])
        ids = np.asarray(table.column("text_id").to_numpy(), dtype=np.int64)
        self.tokens = tokenizer(table.column("text").to_pylist()).to(torch.int32)
        self.row_of_id = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        self.row_of_id[ids] = np.arange(len(ids))

    def __call__(self, text_ids: Sequence[int]) -> torch.Tensor:
        return self.tokens[self.rows(text_ids)].long()

    def rows(self, text_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Row of each text_id in `tokens` (and in any per-text table built from it)."""
        ids = np.asarray(text_ids.cpu() if isinstance(text_ids, torch.Tensor) else text_ids, dtype=np.int64)
        unknown = (ids < 0) | (ids >= len(self.row_of_id))
        rows = np.where(unknown, -1, self.row_of_id[np.clip(ids, 0, max(0, len(self.row_of_id) - 1))])
        if (rows < 0).any():
            raise KeyError(f"text ids without a text: {ids[rows < 0][:5].tolist()}")
        return torch.from_numpy(rows)


class CxrTextStream(IterableDataset):
    """Yields whole `Batch`es (use with DataLoader(batch_size=None)); call `set_epoch` each epoch
    and `set_start_batch` to resume inside one."""

    def __init__(
        self,
        index: SplitIndex,
        tokens: TextTokens,
        batch_size: int,
        image_size: int,
        *,
        augmentation: Augmentation | None = Augmentation(),
        seed: int = 0,
        data_lanes: int = 1,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_window: int = 4,
        drop_last: bool = True,
        text_sampling: TextSampling = "uniform",
        negated_text_ids: frozenset[int] = frozenset(),
        batch_layout: BatchLayout = "one_text",
    ):
        if data_lanes % world_size:
            raise ValueError(f"data_lanes={data_lanes} must be a multiple of the world size {world_size}")
        if not drop_last and data_lanes > 1:
            raise ValueError("drop_last=False is only meaningful with one data lane")
        self.index, self.tokens = index, tokens
        self.batch_size, self.image_size = batch_size, image_size
        self.augmentation, self.seed, self.shuffle = augmentation, seed, shuffle
        self.shuffle_window, self.drop_last = max(1, shuffle_window), drop_last
        if text_sampling not in ("uniform", "positive_first"):
            raise ValueError(f"unknown text_sampling {text_sampling!r}")
        self.text_sampling, self.negated_text_ids = text_sampling, frozenset(negated_text_ids)
        if batch_layout not in ("one_text", "all_texts"):
            raise ValueError(f"unknown batch_layout {batch_layout!r}")
        self.batch_layout = batch_layout
        per_rank = data_lanes // world_size
        self.data_lanes = data_lanes
        self.my_lanes = list(range(rank * per_rank, (rank + 1) * per_rank))
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_batch(self, start_batch: int) -> None:
        self.start_batch = start_batch

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        return len(self._plan(self.epoch if epoch is None else epoch))

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        plan = self._plan(self.epoch)
        cache: OrderedDict[int, dict[int, tuple]] = OrderedDict()
        for k in range(self.start_batch, len(plan)):
            if (k - self.start_batch) % num_workers == worker_id:
                yield self._load_batch(plan[k], cache)

    # -- plan: which (unit, row) goes into which batch; metadata only, no pixels read --------------

    def _plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        order = np.arange(len(self.index.units))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        lanes = [self._lane_refs(order[lane :: self.data_lanes], epoch, lane) for lane in range(self.data_lanes)]
        shortest = min(len(refs) for refs in lanes)
        num_batches = shortest // self.batch_size if self.drop_last else -(-shortest // self.batch_size)
        b = self.batch_size
        return [[ref for lane in self.my_lanes for ref in lanes[lane][k * b : (k + 1) * b]] for k in range(num_batches)]

    def _lane_refs(self, unit_order: np.ndarray, epoch: int, lane: int) -> list[tuple[int, int]]:
        refs: list[tuple[int, int]] = []
        for start in range(0, len(unit_order), self.shuffle_window):
            window = [(int(u), j) for u in unit_order[start : start + self.shuffle_window] for j in range(len(self.index.units[u].rows))]
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch, lane, start]).permutation(len(window))
                window = [window[i] for i in perm]
            refs.extend(window)
        return refs

    # -- loading ----------------------------------------------------------------------------------

    def _load_batch(self, refs: list[tuple[int, int]], cache: OrderedDict) -> Batch:
        images, sampled, all_ids, dicom_ids, draws = [], [], [], [], []
        for unit_index, j in refs:
            unit = self.index.units[unit_index]
            dicom_id = unit.dicom_ids[j]
            _, height, width, pixels = self._unit_rows(unit_index, cache)[unit.rows[j]]
            rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(dicom_id.encode())])
            ids = list(self.index.text_ids[dicom_id])
            if self.batch_layout == "all_texts":
                sampled.extend(ids)
            else:
                sampled.append(self._sample_text(ids, rng))
            image = decode_pixels(pixels, height, width, dicom_id)
            images.append(prepare_image(image, self.image_size, None, rng))
            if self.augmentation is not None:
                draws.append(draw_augmentation(self.augmentation, rng))
            all_ids.append(ids)
            dicom_ids.append(dicom_id)
        batch = torch.stack(images)
        if draws:  # one batched warp instead of one per image: a fifth of a CPU step otherwise
            batch = apply_augmentation(batch, draws).clamp_(0.0, 1.0)
        return Batch(batch, self.tokens(sampled), torch.tensor(sampled), all_ids, dicom_ids)

    def _sample_text(self, ids: list[int], rng: np.random.Generator) -> int:
        if self.text_sampling == "positive_first":
            ids = [i for i in ids if i not in self.negated_text_ids] or ids
        return ids[int(rng.integers(len(ids)))] if self.shuffle else ids[0]

    def _unit_rows(self, unit_index: int, cache: OrderedDict) -> dict[int, tuple]:
        if unit_index in cache:
            cache.move_to_end(unit_index)
            return cache[unit_index]
        unit = self.index.units[unit_index]
        table = pq.ParquetFile(unit.path).read_row_group(unit.row_group, columns=IMAGE_COLUMNS).take(list(unit.rows))
        cache[unit_index] = dict(zip(unit.rows, zip(*(table.column(c).to_pylist() for c in IMAGE_COLUMNS))))
        # A batch draws from at most one window per lane: keep that many units, drop older ones.
        while len(cache) > self.shuffle_window * len(self.my_lanes) + 1:
            cache.popitem(last=False)
        return cache[unit_index]


def make_loader(stream: CxrTextStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)


def decode_pixels(pixels: bytes, height: int, width: int, dicom_id: str) -> torch.Tensor:
    """uint8 row-major grey bytes -> [1, H, W] float in [0, 1]."""
    if len(pixels) != height * width:
        raise ValueError(f"image {dicom_id}: {len(pixels)} pixel bytes, expected {height}x{width}={height * width}")
    array = np.frombuffer(pixels, dtype=np.uint8).reshape(1, height, width)
    return torch.from_numpy(array.copy()).float().div_(255.0)


def prepare_image(image: torch.Tensor, size: int, augmentation: Augmentation | None, rng: np.random.Generator) -> torch.Tensor:
    """Pad to square (keeps the anatomy's proportions), resize, then augment."""
    _, height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    image = F.pad(image, (left, side - width - left, top, side - height - top))
    if side != size:  # images stored at the model's size (the demo) need no resampling
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if augmentation is not None:
        image = augment(image, augmentation, rng)
    return image.clamp_(0.0, 1.0)


def augment(image: torch.Tensor, aug: Augmentation, rng: np.random.Generator) -> torch.Tensor:
    """One [1, S, S] image, augmented with draws from `rng` (as a batch of one)."""
    return apply_augmentation(image[None], [draw_augmentation(aug, rng)])[0]


def draw_augmentation(aug: Augmentation, rng: np.random.Generator) -> tuple[float, ...]:
    """(angle_deg, scale, shift_x, shift_y as fractions of the side, gamma, contrast, brightness)."""
    angle = rng.uniform(-aug.rotation_deg, aug.rotation_deg)
    scale = rng.uniform(*aug.scale)
    shift_x, shift_y = (rng.uniform(-aug.translate_frac, aug.translate_frac) for _ in range(2))
    gamma = rng.uniform(*aug.gamma)
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness)
    return tuple(float(v) for v in (angle, scale, shift_x, shift_y, gamma, contrast, brightness))


def apply_augmentation(images: torch.Tensor, draws: Sequence[tuple[float, ...]]) -> torch.Tensor:
    """Rotate/scale/shift every image of [B, 1, S, S] by its own draw in one grid_sample (zero fill),
    then gamma, contrast about the image mean and brightness."""
    p = torch.tensor(draws, dtype=images.dtype)
    angle, scale = torch.deg2rad(p[:, 0]), p[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output to input coordinates: the inverse of "scale, rotate, then shift".
    shift = 2.0 * p[:, 2:4]  # fractions of the side -> normalised [-1, 1] coordinates
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # [B, 2, 2]
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma, contrast, brightness = (p[:, k].view(-1, 1, 1, 1) for k in (4, 5, 6))
    warped = warped.clamp(0.0, 1.0).pow(gamma)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return (warped - mean) * contrast + mean + brightness
