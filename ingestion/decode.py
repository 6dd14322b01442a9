"""Pixels as training needs them: modality and VOI LUTs applied, MONOCHROME1 inverted,
stretched to the full 8-bit range and resized, using pydicom's own LUT helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

_LOW_PCT, _HIGH_PCT = 0.5, 99.5


def decode_dicom(path: Path | str, size: int, pad_to_square: bool = False) -> np.ndarray:
    """Decode one radiograph to a `size` x `size` uint8 array, bright = dense (MONOCHROME2)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if arr.ndim == 3:  # multi-frame: the first frame is the radiograph
        arr = arr[0]
    display = display_values(arr, ds)
    return resize_uint8(to_uint8(display), size, pad_to_square)


def decode_jpeg(path: Path | str, size: int, pad_to_square: bool = False) -> np.ndarray:
    """MIMIC-CXR-JPG images are already windowed 8-bit MONOCHROME2."""
    with Image.open(path) as image:
        arr = np.asarray(image.convert("L"))
    return resize_uint8(arr, size, pad_to_square)


def display_values(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Float image in [0, 1] where higher means denser (brighter)."""
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        return _display_via_lookup(arr, ds)
    return _display_direct(arr, ds)


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


def _display_via_lookup(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Same result as `_display_direct` for integer pixels: pydicom's LUTs are applied once to
    every stored value that occurs, then the image is indexed through that table, instead of
    running float64 LUT arithmetic over every pixel."""
    offset = int(arr.min())
    shifted = (arr.astype(np.int32) - offset) if offset < 0 else arr
    counts = np.bincount(shifted.ravel())
    stored = np.arange(len(counts), dtype=np.int64) + min(offset, 0)
    present = counts > 0
    values = apply_modality_lut(stored.astype(arr.dtype), ds)
    has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
    if has_voi:
        values = apply_voi_lut(values, ds, prefer_lut=True)
        low, high = float(values[present].min()), float(values[present].max())
    else:
        low, high = _weighted_percentiles(np.asarray(values, dtype=np.float64), counts, (_LOW_PCT, _HIGH_PCT))
    table = _stretch(np.asarray(values, dtype=np.float32), low, high, ds)
    return table[shifted]


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray, percents: tuple[float, float]) -> tuple[float, float]:
    """Percentiles of the image from its histogram (linear interpolation, as np.percentile)."""
    order = np.argsort(values, kind="stable")
    sorted_values, cumulative = values[order], np.cumsum(counts[order])
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
