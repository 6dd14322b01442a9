"""Pixels as training needs them: modality and VOI LUTs applied (pydicom's own helpers),
MONOCHROME1 inverted, stretched between the 0.5 and 99.5 percentiles to the full 8-bit range
and resized.

Full-resolution radiographs (MIMIC-CXR: about 2,500 x 3,000 px) are shrunk to a few hundred
pixels, so the expensive steps run on fewer pixels where the result stays the same to one
grey level: a linear display mapping (the common case) is applied after the resize, which
it commutes with once the stored values are clipped to the mapping's range; percentiles come
from a strided sample; and JPEG 2000 is decoded one resolution level down (OpenJPEG skips the
finest wavelet level entirely) where that level stands in for the full decode (`j2k_level_for`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import (apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space, get_decoder,
                            pixel_array)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless

from ingestion.dicom_index import COLOUR_PHOTOMETRIC, FRAME_TAKEN, MAX_IMAGE_PIXELS, pixel_data_problem
from ingestion.dicom_read import read_dicom
from ingestion.failures import FileProblem, concerning

_LOW_PCT, _HIGH_PCT = 0.5, 99.5
_REDUCING_GAP = 2.0  # PIL box-reduces first while the source is over twice the target
# Percentiles from about this many pixels: 0.5/99.5 % of 250k samples move the stretch by far
# less than a grey level, and histogramming 8M pixels costs as much as the whole resize.
_PERCENTILE_SAMPLES = 250_000
_J2K_SYNTAXES = (JPEG2000Lossless, JPEG2000)
# One level down already gives the 3x (the finest level holds 3/4 of the coefficients); a
# second level (224 px from MIMIC-CXR's size) lowers agreement with the full decode from 99.5%
# to 99.0% of pixels within one grey level for little more speed.
_MAX_J2K_LEVELS = 1
# Where the level stands in for the full decode (>= 99.9% of pixels within one grey level of it,
# measured by tests/test_dicom_decode.py over generated and real radiographs re-encoded at many
# sizes): the level between 2.75x and 4x the target, from a source of at least 2,048 px on its
# shorter side. Just over 2x (RG1_J2KR at 448 px: 2.2x) gave 99.4-99.8%: the level's histogram
# lacks the finest detail and noise, so its 0.5/99.5 percentiles, and the stretch, move by a
# fraction of a grey level; from 4x PIL box-reduces the level on a grid of its own; and sources
# under ~2,000 px hold more detail per pixel than the low band keeps (224 px from 1,272 px:
# 99.7%). MIMIC-CXR (about 2,544 x 3,056) to 448 px is 2.84x.
_LEVEL_RATIO = (2.75, 4.0)
_LEVEL_MIN_SOURCE = 2048
# The level is OpenJPEG's 5/3 low band, a sharper low-pass than the 2 x 2 box average the full
# path starts with (gain 1.10 against 0.92 at a quarter of the sampling rate). A [a, 1-2a, a]
# smoothing of the level with a = 0.08 matches the box's response below half the level's band,
# all the final resize keeps: agreement at 448 px from 1,950 px went from 99.75% to 99.94%.
_LOW_BAND_TO_BOX = 0.08
_BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # R, G, B weights of Y (ITU-R BT.601)


def decode_dicom(path: Path | str, size: int, pad_to_square: bool = False, fast: bool = True,
                 reduce_jpeg2000: bool = True, colour: str = "quarantine", checked: bool = False,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one radiograph to a `size` x `size` uint8 array, bright = dense (MONOCHROME2).
    `fast=False` runs every step at full resolution (the reference the fast path is tested on).
    `reduce_jpeg2000` decodes JPEG 2000 one resolution level down (3x faster) where the header
    allows a linear display mapping and the level is where >= 99.9% of pixels were measured
    within one grey level of the full decode (`j2k_level_for`: 448 px from MIMIC-CXR-size images,
    not 224 px, not smaller sources); elsewhere in full. False: always in full. Never for
    `pad_to_square` (the image's edge against black is a step no low band reproduces). `colour="grey"` decodes colour images
    (RGB, YBR_*, PALETTE COLOR) to their luminance; by default they fail as at indexing.
    `checked`: the index's pixel-data checks already passed on this unchanged file; `max_pixels`:
    the index's size limit (`archive.max_image_pixels`), for a file checked here."""
    ds = read_dicom(path)
    is_colour = str(ds.get("PhotometricInterpretation", "")).strip() in COLOUR_PHOTOMETRIC
    # The index's checks again: a file changed since, or decoded without an index, fails
    # with the same precise reason (FileProblem), not somewhere inside a LUT. A colour file is
    # checked in any case: whether it may pass depends on `colour`, which the index may not share.
    problem = pixel_data_problem(ds, colour=colour, max_pixels=max_pixels) if not checked or is_colour else None
    if problem:
        raise FileProblem(problem)
    if is_colour:
        with concerning("PixelData"):
            luma = colour_luminance(ds)
        # No modality or VOI LUT applies to colour pixels: the stretch alone sets the contrast.
        low, high = np.percentile(_percentile_sample(luma) if fast else luma, [_LOW_PCT, _HIGH_PCT]).astype(float)
        return resize_uint8(to_uint8(_stretch(luma, low, high, ds)), size, pad_to_square)
    # A level is only of use under a linear display mapping: where the header rules one out,
    # decoding the level first would only add to the full decode that follows.
    with concerning("PixelData"):
        reduced = (_reduced_j2k_pixels(ds, size) if fast and reduce_jpeg2000 and not pad_to_square
                   and _luts_may_be_linear(ds) else None)
    if reduced is not None:
        arr, levels = reduced
    else:
        with concerning("PixelData"):
            native = _native_pixels(ds) if fast else None
            arr, levels = (native if native is not None else frame_pixels(ds)), 0
    # Resizing first pays off where PIL would box-reduce (a whole factor > 1 at the reducing gap)
    # or on a reduced J2K level; otherwise the 8-bit lookup path is cheaper (no float image).
    shrinks = not pad_to_square and max(arr.shape) / size / _REDUCING_GAP >= 2
    if fast and (shrinks or levels):
        linear = _linear_display(arr, ds)
        if linear is not None and levels:
            return _resize_level_then_map(arr, *linear, size, levels, (int(ds.Rows), int(ds.Columns)))
        if linear is not None:
            return _resize_then_map(arr, *linear, size, pad_to_square)
    if levels:  # a reduced decode whose display mapping is not linear: decode in full after all
        with concerning("PixelData"):
            arr = ds.pixel_array
    return resize_uint8(display_uint8(arr, ds, sampled=fast), size, pad_to_square)


def frame_pixels(ds: pydicom.Dataset, frame: int = FRAME_TAKEN) -> np.ndarray:
    """The stored values of one frame: a multi-frame file (the index let through only frames
    that are views of one image) decodes that frame alone, not all of them."""
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return pixel_array(ds, index=frame)
    return ds.pixel_array


def colour_luminance(ds: pydicom.Dataset, frame: int = FRAME_TAKEN) -> np.ndarray:
    """ITU-R BT.601 luma (float32, in the stored value range) of one frame of a colour image,
    after its colour space is applied: YBR_* converted to RGB by pydicom (or by the JPEG and
    JPEG 2000 decoders themselves), PALETTE COLOR looked up in its palette."""
    photometric = str(ds.PhotometricInterpretation).strip()
    arr, meta = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=frame, as_rgb=True)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    else:
        decoded_as = str(meta.get("photometric_interpretation", photometric))
        if decoded_as != "RGB":  # a YBR the decoder returned as stored
            arr = convert_color_space(arr, decoded_as, "RGB")
    return np.asarray(arr, dtype=np.float32) @ _BT601_LUMA


def decode_jpeg(path: Path | str, size: int, pad_to_square: bool = False) -> np.ndarray:
    """MIMIC-CXR-JPG images are already windowed 8-bit MONOCHROME2."""
    with Image.open(path) as image:
        arr = np.asarray(image.convert("L"))
    return resize_uint8(arr, size, pad_to_square)


def display_uint8(arr: np.ndarray, ds: pydicom.Dataset, sampled: bool = False) -> np.ndarray:
    """8-bit image where higher means denser (brighter). For integer pixels pydicom's LUTs run
    once per stored value between the image's extremes, rounded to 8 bits there, and the image
    goes through one uint8 gather (the result of `to_uint8(_display_direct(...))` without float
    LUT arithmetic over every pixel). `sampled`: the stretch percentiles come from a strided
    sample (as in the fast path), not from a histogram of every pixel."""
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        table, shifted = _display_table(arr, ds, sample=_percentile_sample(arr) if sampled else None)
        return np.take(to_uint8(table), shifted)
    return to_uint8(_display_direct(arr, ds))


def _percentile_sample(arr: np.ndarray) -> np.ndarray:
    """About `_PERCENTILE_SAMPLES` pixels on a regular grid (a view, no copy)."""
    stride = max(1, int(np.sqrt(arr.size / _PERCENTILE_SAMPLES)))
    return arr[::stride, ::stride]


def _display_direct(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    values = apply_modality_lut(arr, ds)
    if _has_voi(ds):
        values = apply_voi_lut(values, ds, prefer_lut=True)
    low, high = np.percentile(values, [_LOW_PCT, _HIGH_PCT]).astype(float)
    return _stretch(np.asarray(values, dtype=np.float32), low, high, ds)


def _has_voi(ds: pydicom.Dataset) -> bool:
    """The window (or VOI LUT) is the acquisition's intended contrast: it is applied before the
    stretch. The stretch then runs between percentiles of its output, not its extremes, so that
    a burned-in marker or one hot pixel does not set the contrast of the whole image (and a
    reduced-resolution decode, whose extremes are smoothed away, lands on the same stretch)."""
    return "WindowCenter" in ds or "VOILUTSequence" in ds


def _display_table(arr: np.ndarray, ds: pydicom.Dataset, sample: np.ndarray | None = None,
                   extremes: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(display value in [0, 1] per stored value, non-negative indices into that table).
    Percentiles are taken over `sample` (default: every pixel); `extremes` are the image's
    (min, max) when the caller has them already (each is a pass over every pixel)."""
    lowest, highest = extremes or (int(arr.min()), int(arr.max()))
    base = min(lowest, 0)
    shifted = (arr.astype(np.int32) - base) if base < 0 else arr
    # The LUTs only run over stored values between the image's extremes; entries below its
    # minimum (kept so that unsigned pixels index the table without a shift) are never read.
    stored = np.arange(lowest, highest + 1, dtype=np.int64)
    values = apply_modality_lut(stored.astype(arr.dtype), ds)
    if _has_voi(ds):
        values = _voi(values, ds)
    counted = shifted if sample is None else (sample.astype(np.int32) - base if base < 0 else sample)
    counts = np.bincount(counted.ravel(), minlength=highest - base + 1)[lowest - base :]
    low, high = _weighted_percentiles(np.asarray(values, dtype=np.float64), counts, (_LOW_PCT, _HIGH_PCT))
    table = np.zeros(highest - base + 1, dtype=np.float32)
    table[lowest - base :] = _stretch(np.asarray(values, dtype=np.float32), low, high, ds)
    return table, shifted


def _voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """`apply_voi_lut(values, ds, prefer_lut=True)`, value for value. A LINEAR or LINEAR_EXACT
    window (PS3.3 C.11.2.1.2) is computed here as pydicom computes it, with one clip in place of
    its masked assignments (0.4 ms per 16-bit table, a sixth of a 512 px decode); VOI LUT tables,
    sigmoid windows, modality LUT tables and headers pydicom would refuse go to pydicom."""
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    if ("VOILUTSequence" in ds or "ModalityLUTSequence" in ds or function not in ("LINEAR", "LINEAR_EXACT")
            or center is None or width is None):
        return apply_voi_lut(values, ds, prefer_lut=True)
    if function == "LINEAR":
        center, width = center - 0.5, width - 1
    if width <= 0:  # pydicom's own handling: an error, or a step at the centre
        return apply_voi_lut(values, ds, prefer_lut=True)
    bits = int(ds.BitsStored)
    y_min, y_max = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    out = ((np.asarray(values, dtype=np.float64) - center) / width + 0.5) * (y_max - y_min) + y_min
    return np.clip(out, min(y_min, y_max), max(y_min, y_max), out=out)


def _first_value(value: object) -> float | None:
    """The first of a window element's values (pydicom's choice for multi-valued windows) as a
    number, or None (absent, empty or not a number: pydicom then handles, or refuses, the header)."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


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


def _linear_display(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(a, b) such that the display value of stored value x is clip(a*x + b, 0, 1) for every
    value of this image, or None when the LUTs are not of that form (a VOI LUT table, a sigmoid
    window, float pixels): then only the full-resolution path is exact."""
    if arr.dtype.kind not in "ui" or arr.dtype.itemsize > 2 or not _luts_may_be_linear(ds):
        return None
    lowest, highest = int(arr.min()), int(arr.max())
    table, _ = _display_table(arr, ds, sample=_percentile_sample(arr), extremes=(lowest, highest))
    values = table[lowest - min(lowest, 0):].astype(np.float64)
    inside = np.flatnonzero((values > 0) & (values < 1))
    if inside.size < 2:
        return None
    first, last = int(inside[0]), int(inside[-1])
    a = (values[last] - values[first]) / (last - first)
    if a == 0:
        return None
    b = values[first] - a * (first + lowest)
    stored = np.arange(lowest, lowest + values.size, dtype=np.float64)
    # One 256th of a grey level: a mapping that is linear up to float32 rounding.
    if np.abs(np.clip(a * stored + b, 0, 1) - values).max() > 1 / (255 * 256):
        return None
    if abs(1 / a) < 256:  # a narrow stored range: rounding the clip bounds could cost a grey level
        return None
    return float(a), float(b)


def _luts_may_be_linear(ds: pydicom.Dataset) -> bool:
    """False when the header alone rules a linear display mapping out (a LUT table, a sigmoid)."""
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        return False
    return str(ds.get("VOILUTFunction", "LINEAR")).upper() in ("LINEAR", "LINEAR_EXACT")


def _resize_then_map(arr: np.ndarray, a: float, b: float, size: int, pad_to_square: bool) -> np.ndarray:
    """Resize the stored values, then apply the linear display mapping to `size`^2 pixels only.
    Clipping the stored values to the mapping's linear range first makes the two commute (the
    bilinear filter averages with non-negative weights); the clip bounds are rounded outwards to
    whole stored values, which moves a mixed pixel by under 1/(range) of the display range."""
    clipped, high = _clip_to_linear_range(arr, a, b)
    height, width = clipped.shape
    factors = (max(1, int(width / size / _REDUCING_GAP)), max(1, int(height / size / _REDUCING_GAP)))
    if not pad_to_square and factors != (1, 1):
        # PIL's own first step (reduce by whole factors, then bilinear), done on the stored
        # values in numpy: a float copy of the full image alone costs more than the bare loop.
        reduced = Image.fromarray(_box_reduce(clipped, *factors, top=high), mode="F")
        box = (0.0, 0.0, width / factors[0], height / factors[1])
        image = reduced.resize((size, size), Image.Resampling.BILINEAR, box=box)
        return _map_linear(image, a, b)
    image = _float_image(clipped)
    if pad_to_square:
        side = max(image.size)
        canvas = Image.new("F", (side, side), (0 - b) / a)  # the stored value shown as black
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)
    return _map_linear(image, a, b)


def _resize_level_then_map(arr: np.ndarray, a: float, b: float, size: int, levels: int,
                           full_shape: tuple[int, int]) -> np.ndarray:
    """`_resize_then_map` for a J2K resolution level of an image of `full_shape` (rows, columns).
    Sample i of the level sits at full-resolution pixel 2^levels * i, not at the centre of the
    block it stands for, and the last sample may stand for a partial block: the resize box is
    placed in full-resolution coordinates (continuous X is X / 2^levels + shift on the level) so
    the output covers exactly what the full decode covers. A box placed on the level's own grid
    moved edges by up to 10 grey levels and cost 1% of pixels their one-grey-level agreement."""
    clipped, _ = _clip_to_linear_range(arr, a, b)
    rows, columns = full_shape
    scale, shift = 2.0**levels, 0.5 - 0.5 / 2**levels
    # One repeated sample on every side gives the box room (PIL's resize reads past the box).
    canvas = _low_band_to_box(np.pad(clipped.astype(np.float32), 1, mode="edge"))
    box = (shift + 1, shift + 1, columns / scale + shift + 1, rows / scale + shift + 1)
    image = Image.fromarray(canvas, mode="F").resize((size, size), Image.Resampling.BILINEAR, box=box,
                                                     reducing_gap=_REDUCING_GAP)
    return _map_linear(image, a, b)


def _low_band_to_box(canvas: np.ndarray, a: float = _LOW_BAND_TO_BOX) -> np.ndarray:
    """[a, 1-2a, a] along both axes, inside a one-sample border (which stays as it is)."""
    rows = canvas.copy()
    rows[1:-1] = (1 - 2 * a) * canvas[1:-1] + a * (canvas[:-2] + canvas[2:])
    out = rows.copy()
    out[:, 1:-1] = (1 - 2 * a) * rows[:, 1:-1] + a * (rows[:, :-2] + rows[:, 2:])
    return out


def _clip_to_linear_range(arr: np.ndarray, a: float, b: float) -> tuple[np.ndarray, int]:
    """Stored values clipped to where `a*x + b` is inside [0, 1] (bounds rounded outwards to
    whole values), C-contiguous, and the upper bound."""
    ends = sorted(((0 - b) / a, (1 - b) / a))
    info = np.iinfo(arr.dtype)
    low, high = max(int(np.floor(ends[0])), info.min), min(int(np.ceil(ends[1])), info.max)
    clipped = np.clip(arr, low, high, out=arr if arr.flags.writeable and arr.flags.c_contiguous else None)
    return np.ascontiguousarray(clipped), high


def _float_image(arr: np.ndarray) -> Image.Image:
    if arr.dtype == np.uint16:  # shares the buffer; PIL converts to float in one pass
        height, width = arr.shape
        return Image.frombuffer("I;16", (width, height), arr, "raw", "I;16", 0, 1).convert("F")
    return Image.fromarray(arr.astype(np.float32), mode="F")


def _map_linear(image: Image.Image, a: float, b: float) -> np.ndarray:
    return to_uint8(np.clip(a * np.asarray(image, dtype=np.float64) + b, 0.0, 1.0))


def _box_reduce(arr: np.ndarray, fx: int, fy: int, top: int | None = None) -> np.ndarray:
    """Mean of each fx x fy block (float32), partial blocks at the right and bottom edges
    averaged over the pixels they hold, as `PIL.Image.reduce` does. `top`: the largest value
    in `arr`; when a block's sum cannot exceed 16 bits (12-bit radiographs: 4095 x 6), the sums
    are exact in uint16 and move half the bytes of float32."""
    height, width = arr.shape
    full_rows, full_cols = height // fy, width // fx
    narrow = top is not None and arr.dtype.kind == "u" and top * fx * fy <= np.iinfo(np.uint16).max
    rows = np.empty((-(-height // fy), width), dtype=np.uint16 if narrow else np.float32)
    # Strided adds, two operands at a time with the float cast folded in: 4x faster than a
    # reshape-and-sum and no full-size temporary.
    main = rows[:full_rows]
    if fy == 1:
        main[:] = arr[:full_rows]
    else:
        np.add(arr[0: full_rows * fy: fy], arr[1: full_rows * fy: fy], out=main, dtype=rows.dtype)
        for k in range(2, fy):
            main += arr[k: full_rows * fy: fy]
    if height % fy:
        rows[full_rows] = arr[full_rows * fy:].sum(axis=0, dtype=rows.dtype)
    out = np.empty((rows.shape[0], -(-width // fx)), dtype=rows.dtype)
    main = out[:, :full_cols]
    if fx == 1:
        main[:] = rows[:, :full_cols]
    else:
        np.add(rows[:, 0: full_cols * fx: fx], rows[:, 1: full_cols * fx: fx], out=main)
        for k in range(2, fx):
            main += rows[:, k: full_cols * fx: fx]
    if width % fx:
        out[:, full_cols] = rows[:, full_cols * fx:].sum(axis=1, dtype=rows.dtype)
    out = out.astype(np.float32, copy=False)
    out[:, :full_cols] /= fx
    if width % fx:
        out[:, full_cols] /= width - full_cols * fx
    out[:full_rows] /= fy
    if height % fy:
        out[full_rows] /= height - full_rows * fy
    return out


def _native_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """The stored values of a plain uncompressed 16-bit grey image as a read-only view of the
    bytes already read, or None (then `pixel_array`): for a 15 MB radiograph, pydicom's copy
    costs as much as reading the file. Only where the view is exactly `pixel_array`: little
    endian, unsigned, one frame, one sample, and no bit set above BitsStored."""
    if ds.file_meta.get("TransferSyntaxUID") not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    if (int(ds.get("BitsAllocated", 0)) != 16 or int(ds.get("PixelRepresentation", 1)) != 0
            or int(ds.get("SamplesPerPixel", 0)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1):
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    data = ds.get("PixelData")
    if data is None or len(data) < rows * columns * 2:
        return None
    arr = np.frombuffer(data, dtype="<u2", count=rows * columns).reshape(rows, columns)
    if int(arr.max()) >> int(ds.BitsStored):  # bits above BitsStored (overlays): let pydicom handle it
        return None
    return arr


def _reduced_j2k_pixels(ds: pydicom.Dataset, size: int) -> tuple[np.ndarray, int] | None:
    """(stored values, levels discarded) of a single-frame grey JPEG 2000 image decoded one
    resolution level down where that level stands in for the full decode (`_LEVEL_RATIO`,
    `_LEVEL_MIN_SOURCE`), or None (then the full decode)."""
    if ds.file_meta.get("TransferSyntaxUID") not in _J2K_SYNTAXES or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    if int(ds.SamplesPerPixel) != 1 or int(ds.PixelRepresentation) != 0:
        return None
    levels = j2k_level_for(int(ds.Rows), int(ds.Columns), size)
    if levels == 0:
        return None
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    levels_in_stream, precision = _j2k_header(frame)
    levels = min(levels, levels_in_stream)
    if levels == 0 or not 1 < precision <= 16:
        return None
    while True:
        try:
            with Image.open(io.BytesIO(frame)) as image:
                image.reduce = levels  # OpenJPEG's reduce: resolution levels to discard
                image.load()
                mode, arr = image.mode, np.array(image)
            break
        except OSError:  # some code-block layouts refuse a level: try the next finer one
            levels -= 1
            if levels == 0:
                return None
    if mode != "I;16" or arr.shape != (-(-int(ds.Rows) // 2**levels), -(-int(ds.Columns) // 2**levels)):
        return None
    # Pillow scales every precision up to 16 bits by a left shift: undo it for the stored values.
    return (arr >> (16 - precision) if precision < 16 else arr), levels


def j2k_level_for(rows: int, columns: int, size: int) -> int:
    """Resolution levels a JPEG 2000 image of rows x columns may be decoded down by, for a
    `size` px target, under the agreement rule (0: decode in full)."""
    short = min(rows, columns)
    for levels in range(_MAX_J2K_LEVELS, 0, -1):
        ratio = short / 2**levels / size
        if short >= _LEVEL_MIN_SOURCE and _LEVEL_RATIO[0] <= ratio < _LEVEL_RATIO[1]:
            return levels
    return 0


def _j2k_header(codestream: bytes) -> tuple[int, int]:
    """(wavelet decomposition levels, bit precision of the first component) from the SIZ and
    COD markers of a raw J2K codestream; (0, 0) if it is not one, so a JP2-boxed stream or a
    damaged header takes the full decode."""
    if not codestream.startswith(b"\xff\x4f\xff\x51") or len(codestream) < 64:
        return 0, 0
    # SIZ: marker(2) Lsiz(2) Rsiz(2) 8 x 4-byte sizes/offsets Csiz(2), then Ssiz per component.
    precision = (codestream[2 + 40] & 0x7F) + 1
    at = codestream.find(b"\xff\x52", 2, 4096)
    # COD: marker(2) Lcod(2) Scod(1) progression(1) layers(2) MCT(1) decomposition levels(1)
    levels = codestream[at + 9] if at > 0 and at + 9 < len(codestream) else 0
    return levels, precision
