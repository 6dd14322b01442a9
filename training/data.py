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
- the sampled text and the augmentation of an image are drawn from uniforms keyed by
  (seed, epoch, dicom_id) (`image_uniforms`). The sampled text is one of the image's texts, uniformly, or
  with `text_sampling="positive_first"` one of its non-negated texts when it has any: then the
  batch's columns are mostly findings that are present, which is what zero-shot prompts ask about;
- with `batch_layout="all_texts"` (the published code) no text is drawn: every text of every image
  is a column, image by image in text_id order, so the batch has sum T columns, repeats included.
Only the dicom_id column of every row group is read up front; pixels are read batch by batch.
A worker hands over uint8 pixels and each image's augmentation draw; scaling to [0, 1] and the
augmentation run batched where the batch lands (`Batch.images`, on the GPU after `Batch.to`),
so a worker's time goes to reading, not to float arithmetic over every pixel
(benchmarks/loader.py measures it against a bare read-and-stack loop).
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_COLUMNS = ["height", "width", "pixels"]
TextSampling = Literal["uniform", "positive_first"]
BatchLayout = Literal["one_text", "all_texts"]


@dataclass
class Batch:
    """What a loader worker hands over: pixels as stored (uint8, a quarter of float32's bytes to
    copy, pin and send to the device) and each image's augmentation draw. `images` turns them
    into the model's input where the pixels are, so after `to(cuda)` the GPU does that work."""

    pixels: torch.Tensor  # [B, 1, S, S] uint8 as stored, or float32 in [0, 1] where the worker resized
    draws: torch.Tensor | None  # [B, 7] augmentation parameters (see augmentation_draws), None = none
    tokens: torch.Tensor  # [T, L] token ids of the batch's texts (T = B, or sum T with all_texts)
    text_ids: torch.Tensor  # [T] the columns of the target matrix
    image_text_ids: list[list[int]]  # all texts of each image (the rows of the target matrix)
    dicom_ids: list[str]

    def to(self, device: torch.device | str) -> "Batch":
        non_blocking = torch.device(device).type == "cuda"
        return Batch(
            self.pixels.to(device, non_blocking=non_blocking),
            None if self.draws is None else self.draws.to(device, non_blocking=non_blocking),
            self.tokens.to(device, non_blocking=non_blocking),
            self.text_ids.to(device),
            self.image_text_ids,
            self.dicom_ids,
        )

    @cached_property
    def images(self) -> torch.Tensor:
        """[B, 1, S, S] float32 in [0, 1], augmented, computed once on the pixels' device."""
        return finish_images(self.pixels, self.draws)

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


class CxrTextStream:
    """Yields whole `Batch`es, read in this process, or through `make_loader` with worker
    processes; call `set_epoch` each epoch and `set_start_batch` to resume inside one."""

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
        return self.batches()

    def batches(self, num_workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        """This epoch's batches from `start_batch` on. Each row group is read once, by one of
        `num_workers` processes (or here), in the order the batches first need it; the batches
        are put together here from the row groups in memory, which are dropped after their last
        batch. Dealing whole batches to workers instead made every worker read (and decompress)
        nearly every row group, since a batch draws from a whole shuffle window."""
        if get_worker_info() is not None:
            raise RuntimeError("CxrTextStream starts its own loader workers: iterate make_loader(stream, num_workers), "
                               "not a DataLoader over the stream")
        plan = self._plan(self.epoch)[self.start_batch:]
        order, done_after = _first_and_last_uses(plan)
        units = self.index.units
        if num_workers:
            # A window's batches need all its units at once, then none until the next window: let
            # the workers read a second window's worth ahead, or they idle while one is consumed.
            ahead = 2 * self.shuffle_window * len(self.my_lanes)
            reader = DataLoader(_RowGroupReader(units, order), batch_size=None, num_workers=num_workers,
                                prefetch_factor=max(2, -(-ahead // num_workers)))
            arriving = ((u, StoredImages.unpack(packed)) for u, packed in reader)
        else:
            arriving = ((u, StoredImages.read(units[u])) for u in order)
        loaded: dict[int, StoredImages] = {}
        for k, refs in enumerate(plan):
            for u, _ in refs:
                while u not in loaded:  # row groups arrive in the order of their first use
                    got, images = next(arriving)
                    loaded[got] = images
            yield self._load_batch(refs, loaded, pin_memory)
            for u in done_after.get(k, ()):
                del loaded[u]

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

    def _load_batch(self, refs: list[tuple[int, int]], loaded: dict[int, "StoredImages"], pin_memory: bool) -> Batch:
        units = self.index.units
        dicom_ids = [units[u].dicom_ids[j] for u, j in refs]
        stored = [loaded[u].image(j) for u, j in refs]
        uniform = image_uniforms(self.seed, self.epoch, dicom_ids)  # [B, 8]: 7 for the augmentation, 1 the text
        all_ids = [list(self.index.text_ids[dicom_id]) for dicom_id in dicom_ids]
        if self.batch_layout == "all_texts":
            sampled = [i for ids in all_ids for i in ids]
        else:
            sampled = [self._sample_text(ids, float(u)) for ids, u in zip(all_ids, uniform[:, 7])]
        # The augmentation is only drawn here: it runs batched where the batch lands (Batch.images).
        draws = None if self.augmentation is None else torch.from_numpy(
            augmentation_draws(self.augmentation, uniform[:, :7]).astype(np.float32))
        return Batch(stack_pixels(stored, self.image_size, pin_memory), draws, self.tokens(sampled),
                     torch.tensor(sampled), all_ids, dicom_ids)

    def _sample_text(self, ids: list[int], uniform: float) -> int:
        if self.text_sampling == "positive_first":
            ids = [i for i in ids if i not in self.negated_text_ids] or ids
        return ids[min(int(uniform * len(ids)), len(ids) - 1)] if self.shuffle else ids[0]



def _first_and_last_uses(plan: list[list[tuple[int, int]]]) -> tuple[list[int], dict[int, list[int]]]:
    """(units in the order of their first use, batch k -> the units last used by batch k)."""
    last: dict[int, int] = {}
    for k, refs in enumerate(plan):
        for u, _ in refs:
            last[u] = k  # dict order: first use
    done_after: dict[int, list[int]] = {}
    for u, k in last.items():
        done_after.setdefault(k, []).append(u)
    return list(last), done_after


class StoredImages:
    """The images of one unit (its rows of the split), by position in `Unit.rows`: views into one
    uint8 buffer, which is Arrow's decompressed column where it was read (no copy until the batch)."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, heights: np.ndarray, widths: np.ndarray):
        self.data, self.starts, self.heights, self.widths = data, starts, heights, widths

    @classmethod
    def read(cls, unit: Unit) -> "StoredImages":
        table = pq.ParquetFile(unit.path).read_row_group(unit.row_group, columns=IMAGE_COLUMNS)
        pixels = table.column("pixels")
        pixels = pixels.chunk(0) if pixels.num_chunks == 1 else pixels.combine_chunks()
        _, offsets, data = pixels.buffers()
        offset_type = np.dtype(np.int64 if pa.types.is_large_binary(pixels.type) else np.int32)
        offsets = np.frombuffer(offsets, dtype=offset_type, count=len(pixels) + 1,
                                offset=pixels.offset * offset_type.itemsize).astype(np.int64)
        rows = np.asarray(unit.rows, dtype=np.int64)
        starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
        heights = table.column("height").to_numpy()[rows].astype(np.int64)
        widths = table.column("width").to_numpy()[rows].astype(np.int64)
        for j in np.flatnonzero(lengths != heights * widths)[:1]:
            raise ValueError(f"image {unit.dicom_ids[j]}: {lengths[j]} pixel bytes, expected "
                             f"{heights[j]}x{widths[j]}={heights[j] * widths[j]}")
        buffer = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
        return cls(buffer, starts, heights, widths)

    def image(self, j: int) -> np.ndarray:
        """[H, W] uint8 view (read-only where Arrow owns the buffer) of the unit's j-th image."""
        start, height, width = int(self.starts[j]), int(self.heights[j]), int(self.widths[j])
        return self.data[start:start + height * width].reshape(height, width)

    def pack(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """For a worker to send: the span of the buffer that holds the images (rows of the other
        split in between included: fewer bytes than a copy of each image costs) as a tensor over
        the buffer itself, which torch copies once, into shared memory, as it sends it."""
        if not len(self.starts):
            return torch.empty(0, dtype=torch.uint8), self.starts, self.heights, self.widths
        first, end = int(self.starts.min()), int((self.starts + self.heights * self.widths).max())
        with warnings.catch_warnings():  # read-only: nothing writes to it before the copy
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            span = torch.frombuffer(self.data[first:end], dtype=torch.uint8) if end > first else torch.empty(0, dtype=torch.uint8)
        return span, self.starts - first, self.heights, self.widths

    @classmethod
    def unpack(cls, packed: tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]) -> "StoredImages":
        data, starts, heights, widths = packed
        return cls(data.numpy(), starts, heights, widths)  # the array keeps the shared tensor alive


class _RowGroupReader(IterableDataset):
    """Reads units in the given order, dealt to workers in turn (DataLoader collects in turn too)."""

    def __init__(self, units: list[Unit], order: list[int]):
        self.units, self.order = units, order

    def __iter__(self) -> Iterator[tuple[int, tuple]]:
        worker = get_worker_info()
        mine = self.order[worker.id::worker.num_workers] if worker else self.order
        for u in mine:
            yield u, StoredImages.read(self.units[u]).pack()


def stack_pixels(images: Sequence[np.ndarray], size: int, pin_memory: bool = False) -> torch.Tensor:
    """[B, 1, size, size]: uint8, copied straight from the stored views (into page-locked memory
    with `pin_memory`, for an asynchronous copy to the GPU), when every image is stored at `size`
    (ingestion at the model's size); otherwise float32 in [0, 1], each image padded to square and
    resized here (`prepare_image`)."""
    if all(image.shape == (size, size) for image in images):
        batch = torch.empty((len(images), 1, size, size), dtype=torch.uint8, pin_memory=pin_memory)
        target = batch.numpy()
        for i, image in enumerate(images):
            target[i, 0] = image
        return batch
    batch = torch.stack([prepare_image(torch.from_numpy(np.array(image, dtype=np.float32)[None]).div_(255.0), size,
                                       None, None) for image in images])
    return batch.pin_memory() if pin_memory else batch


def finish_images(pixels: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
    """A loader batch as the model's input: uint8 scaled to [0, 1], then each image's augmentation."""
    images = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
    if draws is None:
        return images
    return apply_augmentation(images, draws).clamp_(0.0, 1.0)


def make_loader(stream: CxrTextStream, num_workers: int = 0, pin_memory: bool = False) -> Iterable[Batch]:
    """The stream's batches for its current epoch, each time it is iterated: row groups read by
    `num_workers` processes (0: in this one), batches in pinned memory with `pin_memory`."""
    return _Loader(stream, num_workers, pin_memory)


@dataclass
class _Loader:
    stream: CxrTextStream
    num_workers: int
    pin_memory: bool

    def __iter__(self) -> Iterator[Batch]:
        return self.stream.batches(self.num_workers, self.pin_memory)


def prepare_image(image: torch.Tensor, size: int, augmentation: Augmentation | None,
                  rng: np.random.Generator | None) -> torch.Tensor:
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
    return apply_augmentation(image[None], augmentation_draws(aug, rng.random((1, 7))))[0]


def augmentation_draws(aug: Augmentation, uniform: np.ndarray) -> np.ndarray:
    """[N, 7] (angle_deg, scale, shift_x, shift_y as fractions of the side, gamma, contrast,
    brightness), each uniform within `aug`'s range, from [N, 7] uniforms in [0, 1)."""
    low = np.array([-aug.rotation_deg, aug.scale[0], -aug.translate_frac, -aug.translate_frac, aug.gamma[0],
                    1 - aug.contrast, -aug.brightness])
    high = np.array([aug.rotation_deg, aug.scale[1], aug.translate_frac, aug.translate_frac, aug.gamma[1],
                     1 + aug.contrast, aug.brightness])
    return low + (high - low) * uniform


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def image_uniforms(seed: int, epoch: int, dicom_ids: Sequence[str], count: int = 8) -> np.ndarray:
    """[N, count] uniforms in [0, 1), a pure function of (seed, epoch, dicom_id): an image gets the
    same text and augmentation in whichever batch, lane, rank or worker it lands. SplitMix64 over
    the image's key, vectorised over the batch (a numpy Generator per image cost more than the
    rest of the batch together)."""
    base = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    crcs = np.array([zlib.crc32(d.encode()) for d in dicom_ids], dtype=np.uint64)
    keys = _splitmix(base ^ crcs)
    counters = keys[:, None] + _GOLDEN * np.arange(1, count + 1, dtype=np.uint64)[None, :]
    return (_splitmix(counters) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def apply_augmentation(images: torch.Tensor, draws: Sequence[tuple[float, ...]] | torch.Tensor) -> torch.Tensor:
    """Rotate/scale/shift every image of [B, 1, S, S] by its own draw in one grid_sample (zero fill),
    then gamma, contrast about the image mean and brightness; on the images' device."""
    p = torch.as_tensor(draws, dtype=images.dtype, device=images.device)
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
