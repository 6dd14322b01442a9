"""Write renders as DICOM with the variety of a real archive: MONOCHROME1/2, 12/15/16 bits
stored, modality and VOI LUTs, DX/CR, and a few JPEG 2000 lossless files.

Nothing here reads the clock: dates, UIDs and names all come from the caller's generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEG2000Lossless

from common.storage import atomic_path

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


@dataclass(frozen=True)
class PixelStyle:
    """How the pixels are stored; drawn per image."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    bits_allocated: int = 16
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: bool = False
    voi_lut: bool = False
    jpeg2000: bool = False
    modality: str = "DX"


@dataclass(frozen=True)
class Identity:
    """Who and what the image is; same patient and study fields across a study's images."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    view_position: str
    accession: str = ""
    study_description: str = "CHEST (PA AND LAT)"
    series_number: int = 1


def sample_pixel_style(rng: np.random.Generator) -> PixelStyle:
    voi_lut = rng.random() < 0.06
    rescale = None
    if rng.random() < 0.3 and not voi_lut:  # VOI LUTs here index unsigned modality values
        rescale = (float(rng.choice([1.0, 0.5, 2.0])), float(rng.choice([0.0, -1024.0, 100.0])))
    return PixelStyle(
        photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        bits_stored=int(rng.choice([12, 15, 16])),
        rescale=rescale,
        window=rng.random() < 0.5,
        voi_lut=voi_lut,
        jpeg2000=rng.random() < 0.05,
        modality="CR" if rng.random() < 0.3 else "DX",
    )


def eight_bit_style() -> PixelStyle:
    """RSNA / SIIM style: plain 8-bit MONOCHROME2."""
    return PixelStyle(photometric="MONOCHROME2", bits_stored=8, bits_allocated=8, modality="CR")


def write_dicom(path: Path, image: np.ndarray, style: PixelStyle, identity: Identity) -> dict[str, object]:
    """Store a float [0, 1] image (brighter = denser) atomically; returns the images.csv row."""
    stored = _to_stored(image, style)
    ds = _dataset(stored, style, identity)
    if style.jpeg2000:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return {
        "photometric": style.photometric,
        "bits_stored": style.bits_stored,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "has_voi": style.window or style.voi_lut,
        "rows": int(stored.shape[0]),
        "columns": int(stored.shape[1]),
    }


def _to_stored(image: np.ndarray, style: PixelStyle) -> np.ndarray:
    top = (1 << style.bits_stored) - 1
    # Real detectors rarely use the full range; leave a margin at both ends.
    lo, hi = (0.0, float(top)) if style.bits_stored == 8 else (0.03 * top, 0.97 * top)
    values = lo + image * (hi - lo)
    if style.photometric == "MONOCHROME1":
        values = hi + lo - values  # stored inverted: high values display dark
    dtype = np.uint8 if style.bits_allocated == 8 else np.uint16
    return np.clip(np.rint(values), 0, top).astype(dtype)


def _dataset(stored: np.ndarray, style: PixelStyle, identity: Identity) -> FileDataset:
    sop_class = DX_STORAGE if style.modality == "DX" else CR_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = identity.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDFILIP_CORPUS"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = identity.sop_uid
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.Modality = style.modality
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.StudyDescription = identity.study_description
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = identity.view_position
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.SeriesNumber = identity.series_number
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["A", "F"] if identity.view_position in ("LATERAL", "LL") else ["L", "F"]
    if style.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = style.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = style.bits_allocated
    ds.BitsStored = style.bits_stored
    ds.HighBit = style.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.139, 0.139]
    modality_values = _add_modality_lut(ds, stored, style)
    if style.window or style.voi_lut:
        _add_voi(ds, modality_values, style)
    ds.PixelData = stored.tobytes()
    return ds


def _add_modality_lut(ds: FileDataset, stored: np.ndarray, style: PixelStyle) -> np.ndarray:
    """Rescale tags where the style has them; returns the values the VOI acts on."""
    if style.rescale is None:
        return stored
    slope, intercept = style.rescale
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    return stored.astype(np.float32) * slope + intercept


def _add_voi(ds: FileDataset, values: np.ndarray, style: PixelStyle) -> None:
    """A window (and sometimes a VOI LUT) that covers the body, in modality-value units."""
    lo, hi = np.percentile(values[::4, ::4], [1, 99.5])
    if style.window:
        ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
        ds.WindowWidth = f"{max(hi - lo, 1.0):.1f}"
        ds.VOILUTFunction = "LINEAR"
    if style.voi_lut:
        first = int(np.floor(lo))
        entries = int(np.clip(np.ceil(hi) - first + 1, 2, 65535))
        x = np.linspace(-3, 3, entries)
        curve = np.rint(65535 / (1 + np.exp(-x))).astype(np.uint16)  # sigmoid, like vendor LUTs
        item = pydicom.Dataset()
        item.LUTDescriptor = [entries, first, 16]
        item.LUTExplanation = "SIGMOID"
        item.add_new(0x00283006, "OW", curve.astype("<u2").tobytes())  # LUTData
        ds.VOILUTSequence = Sequence([item])
