"""Colour images: quarantined by default with the setting that admits them, or ingested as
their ITU-R BT.601 luminance with colour="grey"."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from ingestion.decode import colour_luminance, decode_dicom
from ingestion.images import build_cxr_images
from ingestion.shards import index_shard
from tests.dicom_factory import chest_dx_copy, mimic_path, write_rgb_dicom

SALT = b"salt"
# One real file per colour encoding (pydicom's test files).
COLOUR_FILES = {
    "RGB": "SC_rgb.dcm",
    "YBR_FULL": "SC_ybr_full_uncompressed.dcm",
    "YBR_FULL_422": "SC_ybr_full_422_uncompressed.dcm",
    "YBR_RCT": "US1_J2KR.dcm",
    "YBR_ICT": "US1_J2KI.dcm",
    "PALETTE COLOR": "OBXXXX1A.dcm",
}


def _archive(root: Path) -> dict[str, str]:
    """Each colour file in its own study, re-tagged as a chest DX; dicom_id -> photometric."""
    ids = {}
    for number, (photometric, name) in enumerate(COLOUR_FILES.items(), 1):
        dicom_id = f"colour{number}"
        chest_dx_copy(get_testdata_file(name), mimic_path(root, 10000000 + number, 50000000 + number, dicom_id))
        ids[dicom_id] = photometric
    return ids


def test_colour_images_are_quarantined_by_default_with_the_setting_to_change(tmp_path):
    root = tmp_path / "archive"
    ids = _archive(root)
    result = index_shard(root, "p10", SALT, tmp_path / "index.parquet", tmp_path / "quarantine.parquet")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert result.index.num_rows == 0
    assert reasons == {dicom_id: f"colour image ({photometric}): set archive.colour: grey to ingest it as luminance"
                       for dicom_id, photometric in ids.items()}


def test_with_colour_grey_every_colour_encoding_is_indexed_and_decoded(tmp_path):
    root = tmp_path / "archive"
    ids = _archive(root)
    result = index_shard(root, "p10", SALT, tmp_path / "index.parquet", tmp_path / "quarantine.parquet",
                         colour="grey")
    assert result.quarantine.num_rows == 0
    rows = {r["dicom_id"]: r for r in result.index.to_pylist()}
    assert {i: r["photometric_interpretation"] for i, r in rows.items()} == ids  # the source's, recorded
    assert all(r["converted_to_grey"] for r in rows.values())

    out = tmp_path / "images.parquet"
    images = build_cxr_images(result.index, root, out, tmp_path / "decode_quarantine.parquet", size=64, colour="grey")
    assert images.images == len(ids) and images.quarantined == 0
    assert all(len(r["pixels"]) == 64 * 64 for r in pq.read_table(out).to_pylist())
    # Decoding under the default refuses them with the index's reason, file by file.
    refused = build_cxr_images(result.index, root, tmp_path / "i2.parquet", tmp_path / "q2.parquet", size=64)
    reasons = pq.read_table(tmp_path / "q2.parquet").column("reason").to_pylist()
    assert refused.images == 0 and reasons == [f"decode failed: colour image ({ids[i]}): set archive.colour: grey "
                                               f"to ingest it as luminance" for i in rows]


@pytest.mark.parametrize("rgb, other, tolerance", [
    ("SC_rgb.dcm", "SC_ybr_full_uncompressed.dcm", 1),  # the same picture stored as RGB and as YBR
    ("SC_rgb.dcm", "SC_ybr_full_422_uncompressed.dcm", 1),
    ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", 6),  # JPEG baseline YBR_FULL_422: lossy
    ("US1_UNCR.dcm", "US1_J2KR.dcm", 0),  # JPEG 2000 lossless with the reversible colour transform
])
def test_every_colour_space_gives_the_luminance_of_the_same_picture(rgb, other, tolerance):
    reference = decode_dicom(get_testdata_file(rgb), 64, colour="grey").astype(int)
    assert np.abs(decode_dicom(get_testdata_file(other), 64, colour="grey").astype(int) - reference).max() <= tolerance


def test_palette_colour_is_looked_up_then_weighted_as_bt601():
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    rgb = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.allclose(colour_luminance(ds), expected, atol=1e-2)


def test_pure_colours_take_their_bt601_luminance(tmp_path):
    # Bands of black, red, green, blue, white: black and white pin the stretch to 0..255.
    bands = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    rgb = np.repeat(np.array(bands, dtype=np.uint8)[:, None, :], 20, axis=0)  # 100 x 1 x 3
    rgb = np.repeat(rgb, 100, axis=1)  # 100 x 100 x 3
    image = decode_dicom(write_rgb_dicom(tmp_path / "bands.dcm", rgb), 100, colour="grey", fast=False)
    means = [float(image[20 * i + 5: 20 * i + 15].mean()) for i in range(5)]
    assert means == pytest.approx([0, 0.299 * 255, 0.587 * 255, 0.114 * 255, 255], abs=1)


def test_an_unknown_colour_setting_fails_before_any_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="colour 'gray': expected one of"):
        index_shard(tmp_path, "p10", SALT, tmp_path / "i.parquet", tmp_path / "q.parquet", colour="gray")
