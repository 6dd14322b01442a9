"""Real DICOM files for tests, written with pydicom (no fixtures checked in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "QUIXOTE^ALONSO"
PATIENT_ID = "MRN77120934"
BIRTH_DATE = "19470923"


def chest_like(rows: int = 128, cols: int = 112, seed: int = 0) -> np.ndarray:
    """A float image in [0, 1]: dense centre (mediastinum) between two dark lungs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    img = np.full((rows, cols), 0.6)
    for cx in (0.27 * cols, 0.73 * cols):
        lung = ((x - cx) / (0.18 * cols)) ** 2 + ((y - 0.5 * rows) / (0.35 * rows)) ** 2 < 1
        img[lung] = 0.15
    img[:, int(0.45 * cols): int(0.55 * cols)] = 0.9
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def write_dicom(
    path: Path,
    image: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    view: str = "PA",
    window: tuple[float, float] | None = None,
    with_pixels: bool = True,
    transfer_syntax=ExplicitVRLittleEndian,
    patient_name: str = PATIENT_NAME,
    patient_id: str = PATIENT_ID,
) -> Path:
    image = chest_like() if image is None else image
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition = "DX", view
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_name, patient_id, BIRTH_DATE
    if with_pixels:
        top = 2**bits_stored - 1
        values = image if photometric == "MONOCHROME2" else 1.0 - image
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        raw = np.round(values * top).astype(np.uint16).tobytes()
        # A compressed syntax needs encapsulated fragments; these bytes are not a real codestream.
        ds.PixelData = encapsulate([raw]) if transfer_syntax.is_compressed else raw
        if window:
            ds.WindowCenter, ds.WindowWidth = window
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def mimic_path(root: Path, subject: int, study: int, dicom_id: str) -> Path:
    return root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.dcm"


def write_report(root: Path, subject: int, study: int, text: str) -> Path:
    path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def set_raw_element(path: Path, keyword: str, vr: str, value: bytes) -> Path:
    """Rewrite one element of a DICOM file with exactly these value bytes under this VR, as a
    faulty modality would (pydicom validates values it is given, not bytes it is handed)."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    tag = Tag(tag_for_keyword(keyword))
    padded = value + (b" " if len(value) % 2 else b"")
    ds._dict[tag] = RawDataElement(tag, vr, len(padded), padded, 0, False, True)
    ds.save_as(path)
    return path


def write_rgb_dicom(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB secondary capture (rows x columns x 3 uint8), written with pydicom."""
    from pydicom.uid import SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition = "OT", "PA"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_dx_copy(source: Path | str, dest: Path) -> Path:
    """A copy of a real DICOM file (e.g. one of pydicom's test files) re-tagged as a chest DX
    of its own study: new UIDs, this factory's patient, its pixels and transfer syntax kept."""
    import pydicom
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    ds = pydicom.dcmread(source)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest
