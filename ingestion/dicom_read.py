"""Open a DICOM file the way real archives need: files written without the 128-byte preamble
and 'DICM' prefix (older modalities, some PACS exports) are valid datasets and are read, as
long as what follows parses as an image dataset; anything else stays "not a DICOM file"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

NOT_DICOM = "not a DICOM file: no 'DICM' prefix, and the bytes do not parse as an image dataset"


def read_dicom(path: Path | str, **kwargs: Any) -> pydicom.Dataset:
    """`pydicom.dcmread`, falling back to a forced read for preamble-less files; the transfer
    syntax such a file lacks is filled in from the encoding the dataset was read with."""
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True, **kwargs)
        is_image = "SOPClassUID" in ds and "Rows" in ds and "Columns" in ds
    except Exception:  # garbage read as a dataset fails on first access in many ways
        is_image = False
    if not is_image:
        raise InvalidDicomError(NOT_DICOM)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds
