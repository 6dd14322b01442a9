"""Multi-frame files: the index records the frames and the frame taken, and sets aside files
whose frames are not views of one chest image (a cine loop, frames of different geometry)."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ingestion.decode import decode_dicom
from ingestion.shards import index_shard
from tests.dicom_factory import chest_dx_copy, chest_like, mimic_path, write_dicom

SALT = b"salt"


def _multi_frame(path: Path, frames: int, per_frame: list[dict] | None = None, **header) -> Path:
    """A DX written with pydicom holding `frames` frames (the first is chest_like(seed=0), the
    others other noise), optional per-frame functional groups ({sequence: {keyword: value}})."""
    ds = pydicom.dcmread(write_dicom(path, chest_like(seed=0)))  # 12-bit MONOCHROME2, as write_dicom stores it
    pixels = [np.round(chest_like(seed=k) * 4095).astype(np.uint16).tobytes() for k in range(frames)]
    assert pixels[0] == ds.PixelData
    ds.NumberOfFrames, ds.PixelData = frames, b"".join(pixels)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    if per_frame:
        items = []
        for groups in per_frame:
            item = Dataset()
            for sequence, values in groups.items():
                inner = Dataset()
                for keyword, value in values.items():
                    setattr(inner, keyword, value)
                setattr(item, sequence, Sequence([inner]))
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.save_as(path)
    return path


def _index(root: Path, out: Path):
    result = index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet", colour="grey")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    return {r["dicom_id"]: r for r in result.index.to_pylist()}, reasons


def test_frames_of_one_image_are_indexed_with_the_frame_taken(tmp_path):
    root = tmp_path / "archive"
    _multi_frame(mimic_path(root, 10000001, 50000001, "plain"), 3)
    same = {"PlanePositionSequence": {"ImagePositionPatient": [0, 0, 0]},
            "PixelMeasuresSequence": {"PixelSpacing": [0.2, 0.2]}}
    _multi_frame(mimic_path(root, 10000002, 50000002, "same_geometry"), 2, per_frame=[same, same])
    rows, reasons = _index(root, tmp_path / "out")
    assert not reasons
    assert {i: (r["number_of_frames"], r["frame_index"]) for i, r in rows.items()} == {
        "plain": (3, 0), "same_geometry": (2, 0)}


def test_the_first_frame_alone_is_decoded(tmp_path):
    multi = _multi_frame(tmp_path / "multi.dcm", 3)
    single = write_dicom(tmp_path / "single.dcm", chest_like(seed=0))
    assert np.array_equal(decode_dicom(multi, 64), decode_dicom(single, 64))


@pytest.mark.parametrize("header, expected", [
    ({"CineRate": 15}, "cine loop (3 frames, CineRate): a sequence over time, not one chest image"),
    ({"FrameTime": 66.7, "FrameIncrementPointer": 0x00181063},
     "cine loop (3 frames, FrameTime): a sequence over time, not one chest image"),
    ({"FrameIncrementPointer": 0x00181065}, "cine loop (3 frames, FrameIncrementPointer to FrameTime)"),
    ({"FrameIncrementPointer": 0x00540080},
     "multi-frame (3 frames) whose frames vary by SliceVector (FrameIncrementPointer): not one chest image"),
])
def test_a_cine_or_a_stack_is_quarantined(tmp_path, header, expected):
    root = tmp_path / "archive"
    _multi_frame(mimic_path(root, 10000001, 50000001, "moving"), 3, **header)
    rows, reasons = _index(root, tmp_path / "out")
    assert not rows and reasons["moving"].startswith(expected)


@pytest.mark.parametrize("sequence, keyword, values", [
    ("PlanePositionSequence", "ImagePositionPatient", ([0, 0, 0], [0, 0, 5])),
    ("PlaneOrientationSequence", "ImageOrientationPatient", ([1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1])),
    ("PixelMeasuresSequence", "PixelSpacing", ([0.2, 0.2], [0.4, 0.4])),
])
def test_frames_of_different_geometry_are_quarantined(tmp_path, sequence, keyword, values):
    root = tmp_path / "archive"
    per_frame = [{sequence: {keyword: value}} for value in values]
    _multi_frame(mimic_path(root, 10000001, 50000001, "stack"), 2, per_frame=per_frame)
    rows, reasons = _index(root, tmp_path / "out")
    assert not rows and reasons["stack"] == (
        f"multi-frame (2 frames) whose per-frame {keyword} differs ({sequence}): the frames are different "
        f"images, not views of one chest image")


@pytest.mark.parametrize("name, expected", [
    ("examples_ybr_color.dcm", "cine loop (30 frames, FrameTime): "),  # an ultrasound clip
    ("eCT_Supplemental.dcm", "multi-frame (2 frames) whose per-frame ImagePositionPatient differs"),  # enhanced CT
    ("rtdose.dcm", "multi-frame (15 frames) whose frames vary by GridFrameOffsetVector"),
])
def test_real_multi_frame_files_that_are_not_one_image(tmp_path, name, expected):
    root = tmp_path / "archive"
    chest_dx_copy(get_testdata_file(name), mimic_path(root, 10000001, 50000001, "real"))
    rows, reasons = _index(root, tmp_path / "out")
    assert not rows and reasons["real"].startswith(expected)
