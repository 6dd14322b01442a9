"""A small MIMIC-layout archive with good and broken files, for ingestion tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.uid import JPEGLSLossless

from tests.dicom_factory import mimic_path, write_dicom, write_report

GOOD_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  ___ with cough.
 COMPARISON:  None.
 FINDINGS:
 There is a small right pleural effusion. No pneumothorax.
 IMPRESSION:
 Small right effusion.
"""


def build_archive(root: Path) -> dict[str, list[str]]:
    """Shard p10: 3 good images + 5 broken files; shard p11: the real RG1 radiograph."""
    good = [
        write_dicom(mimic_path(root, 10000001, 50000001, "aaaa0001"), view="PA"),
        write_dicom(mimic_path(root, 10000001, 50000001, "aaaa0002"), view="LL", photometric="MONOCHROME1"),
        write_dicom(mimic_path(root, 10000002, 50000002, "aaaa0003"), view="AP", bits_stored=16, window=(2000, 4000)),
    ]
    write_report(root, 10000001, 50000001, GOOD_REPORT)
    write_report(root, 10000002, 50000002, "impression: No acute cardiopulmonary process.")
    write_report(root, 10000003, 50000003, "___\n")  # no usable text: kept and flagged

    broken = {
        "random": mimic_path(root, 10000004, 50000004, "bad00001"),
        "zero": mimic_path(root, 10000004, 50000004, "bad00002"),
        "truncated": mimic_path(root, 10000004, 50000004, "bad00003"),
        "no_pixels": mimic_path(root, 10000004, 50000004, "bad00004"),
        "jpeg_ls": mimic_path(root, 10000004, 50000004, "bad00005"),
    }
    broken["random"].parent.mkdir(parents=True, exist_ok=True)
    broken["random"].write_bytes(os.urandom(4096))
    broken["zero"].write_bytes(b"")
    whole = write_dicom(broken["truncated"]).read_bytes()
    broken["truncated"].write_bytes(whole[: len(whole) - 5000])
    write_dicom(broken["no_pixels"], with_pixels=False)
    # Claims JPEG-LS, for which no decoder is installed here.
    write_dicom(broken["jpeg_ls"], transfer_syntax=JPEGLSLossless)
    write_report(root, 10000004, 50000004, "FINDINGS: Heart size is normal.\n")

    real = mimic_path(root, 11000001, 51000001, "rg1uncr")
    real.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), real)
    write_report(root, 11000001, 51000001, "FINDINGS: Lungs are clear.\nIMPRESSION: Normal chest.")
    return {"good": [str(p) for p in good], "broken": [str(p) for p in broken.values()]}
