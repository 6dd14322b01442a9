"""Copies of a DICOM file at a real archive's size: the decode work of a MIMIC-CXR file
(about 2,544 x 3,056 px, raw or JPEG 2000) from a small generated or sample radiograph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless

# Per-pixel noise as a share of the image's range: a bicubic upscale is smooth where a detector's
# image is not, and how much finer detail the full resolution holds is what decoders pay for.
DETECTOR_NOISE = 0.004


def full_resolution_copy(path: Path, out: Path, source: tuple[int, int], codec: str = "uncompressed",
                         noise: float = DETECTOR_NOISE) -> Path:
    """`path`'s image resampled to `source` (width, height) with detector-like noise, same
    pixel style (bits, photometric, window, LUTs), optionally stored JPEG 2000 lossless."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    arr = ds.pixel_array
    if arr.shape[::-1] != source:
        big = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(source, Image.Resampling.BICUBIC))
        spread = noise * (float(arr.max()) - float(arr.min()) + 1)
        big = big + np.random.default_rng(len(Path(path).name)).normal(0, spread, big.shape)
        top = 2 ** int(ds.BitsStored) - 1 if int(ds.PixelRepresentation) == 0 else np.iinfo(arr.dtype).max
        arr = np.clip(np.rint(big), 0 if int(ds.PixelRepresentation) == 0 else np.iinfo(arr.dtype).min, top)
        arr = arr.astype(ds.pixel_array.dtype)
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
    if codec == "jpeg2000":
        ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
