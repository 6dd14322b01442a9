"""Pixels as training needs them: modality and VOI LUTs applied, MONOCHROME1 inverted,
stretched to the full 8-bit range and resized, using pydicom's own LUT helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ingestion.dicom_read import read_dicom

_LOW_PCT, _HIGH_PCT = 0.5, 99.5


def decode_dicom(path: Path | str, size: int, pad_to_square: bool = False) -> np.ndarray:
    """Decode one radiograph to a `size` x `size` uint8 array, bright = dense (MONOCHROME2)."""
    ds = read_dicom(path)
    arr = ds.pixel_array
    if arr.ndim == 3:  # multi-frame: the first frame is the radiograph
        arr = arr[0]
    return resize_uint8(display_uint8(arr, ds), size, pad_to_square)


def decode_jpeg(path: Path | str, size: int, pad_to_square: bool = False) -> np.ndarray:
    """MIMIC-CXR-JPG images are already windowed 8-bit MONOCHROME2."""
    with Image.open(path) as image:
        arr = np.asarray(image.convert("L"))
    return resize_uint8(arr, size, pad_to_square)


def display_uint8(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """8-bit image where higher means denser (brighter)."""
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        return _uint8_via_lookup(arr, ds)
    return to_uint8(_display_direct(arr, ds))


def _display_direct(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    values = apply_modality_lut(arr, ds)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        # The window is the acquisition's intended contrast: keep it and stretch its output.
        values = apply_voi_lut(values, ds, prefer_lut=True)
        low, high = float(values.min()), float(values.max())
    else:
        low, high = np.percentile(values, [_LOW_PCT, _HIGH_PCT]).astype(float)
    return _stretch(np.asarray(values, dtype=np.float32), low, high, ds)


def _uint8_via_lookup(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Same result as `to_uint8(_display_direct(...))` for integer pixels: pydicom's LUTs are
    applied once to every stored value that occurs and rounded to 8 bits there, then the image
    goes through one uint8 gather, instead of float64 LUT arithmetic over every pixel."""
    table, shifted = _display_table(arr, ds)
    return np.take(to_uint8(table), shifted)


def _display_table(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(display value in [0, 1] per stored value, non-negative indices into that table)."""
    lowest, highest = int(arr.min()), int(arr.max())
    base = min(lowest, 0)
    shifted = (arr.astype(np.int32) - base) if base < 0 else arr
    # The LUTs only run over stored values between the image's extremes; entries below its
    # minimum (kept so that unsigned pixels index the table without a shift) are never read.
    stored = np.arange(lowest, highest + 1, dtype=np.int64)
    values = apply_modality_lut(stored.astype(arr.dtype), ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        steps = np.diff(values)
        if (steps >= 0).all() or (steps <= 0).all():
            # A monotonic window takes its extremes at the extreme stored values: no histogram needed.
            low, high = sorted((float(values[0]), float(values[-1])))
        else:
            present = np.bincount(shifted.ravel(), minlength=highest - base + 1)[lowest - base :] > 0
            low, high = float(values[present].min()), float(values[present].max())
    else:
        counts = np.bincount(shifted.ravel(), minlength=highest - base + 1)[lowest - base :]
        low, high = _weighted_percentiles(np.asarray(values, dtype=np.float64), counts, (_LOW_PCT, _HIGH_PCT))
    table = np.zeros(highest - base + 1, dtype=np.float32)
    table[lowest - base :] = _stretch(np.asarray(values, dtype=np.float32), low, high, ds)
    return table, shifted


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, percents: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the image from its histogram (linear interpolation, as np.percentile)."""
    steps = np.diff(values)
    if (steps >= 0).all():  # rescale slope/intercept keeps stored order: no sort needed
        sorted_values, sorted_counts = values, counts
    else:
        order = np.argsort(values, kind="stable")
        sorted_values, sorted_counts = values[order], counts[order]
    cumulative = np.cumsum(sorted_counts)
    total = cumulative[-1]
    result = []
    for percent in percents:
        rank = percent / 100 * (total - 1)
        lower, upper = int(np.floor(rank)), int(np.ceil(rank))
        at = lambda r: sorted_values[np.searchsorted(cumulative, r, side="right")]  # noqa: E731
        result.append(float(at(lower) + (at(upper) - at(lower)) * (rank - lower)))
    return result[0], result[1]


def _stretch(values: np.ndarray, low: float, high: float, ds: pydicom.Dataset) -> np.ndarray:
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.round(values * 255.0).astype(np.uint8)


def resize_uint8(arr: np.ndarray, size: int, pad_to_square: bool = False) -> np.ndarray:
    image = Image.fromarray(arr, mode="L")
    if pad_to_square:
        side = max(image.size)
        canvas = Image.new("L", (side, side), 0)
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8)
