"""Every transfer syntax and photometric interpretation among pydicom's own test files, each
re-tagged as a chest DX of its own study: every file becomes an image row or a quarantine
row with a precise reason, and none is lost."""

from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ingestion.images import build_cxr_images
from ingestion.shards import index_shard
from tests.dicom_factory import chest_dx_copy, mimic_path

SALT = b"salt"
IMAGE = "image"
NO_DECODER = "has no installed decoder ("
PILLOW_12_BIT = "with 12-bit samples: the only installed decoder (Pillow) reads 8-bit JPEG only"

# file -> (transfer syntax, photometric interpretation, outcome with colour="grey": IMAGE or the
# start of the quarantine reason). Under the default colour="quarantine" every colour file is
# quarantined instead, naming the setting.
FILES = {
    # Explicit VR little endian
    "RG1_UNCR.dcm": ("Explicit VR Little Endian", "MONOCHROME1", IMAGE),
    "CT_small.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),
    "SC_rgb.dcm": ("Explicit VR Little Endian", "RGB", IMAGE),
    "SC_rgb_32bit.dcm": ("Explicit VR Little Endian", "RGB", IMAGE),
    "SC_ybr_full_uncompressed.dcm": ("Explicit VR Little Endian", "YBR_FULL", IMAGE),
    "SC_ybr_full_422_uncompressed.dcm": ("Explicit VR Little Endian", "YBR_FULL_422", IMAGE),
    "OBXXXX1A.dcm": ("Explicit VR Little Endian", "PALETTE COLOR", IMAGE),
    "examples_palette.dcm": ("Explicit VR Little Endian", "PALETTE COLOR", IMAGE),
    "vlut_04.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),  # VOI LUT sequence
    "mlut_18.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),  # modality LUT sequence
    "MR-SIEMENS-DICOM-WithOverlays.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),
    "liver_1frame.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),  # 1 bit per pixel
    "MR_truncated.dcm": ("Explicit VR Little Endian", "MONOCHROME2",
                         "truncated Pixel Data: 8130 bytes, expected 8192 for 64x64x16-bit x 1 frame(s)"),
    "badVR.dcm": ("Explicit VR Little Endian", "MONOCHROME2",
                  "NumberOfFrames: ValueError: invalid literal for int() with base 10: '1A'"),
    "nested_priv_SQ.dcm": ("Implicit VR Little Endian", None, "missing required element Rows"),
    # Implicit VR little endian
    "MR_small_implicit.dcm": ("Implicit VR Little Endian", "MONOCHROME2", IMAGE),
    "gdcm-US-ALOKA-16.dcm": ("Implicit VR Little Endian", "PALETTE COLOR", IMAGE),  # 16-bit palette
    "SC_rgb_jpeg_dcmd.dcm": ("Implicit VR Little Endian", "RGB", IMAGE),
    # Explicit VR big endian
    "MR_small_bigendian.dcm": ("Explicit VR Big Endian", "MONOCHROME2", IMAGE),
    "SC_rgb_expb.dcm": ("Explicit VR Big Endian", "RGB", IMAGE),
    "OBXXXX1A_expb.dcm": ("Explicit VR Big Endian", "PALETTE COLOR", IMAGE),
    # Deflated
    "image_dfl.dcm": ("Deflated Explicit VR Little Endian", "MONOCHROME2", IMAGE),
    # RLE lossless
    "MR_small_RLE.dcm": ("RLE Lossless", "MONOCHROME2", IMAGE),
    "SC_rgb_rle.dcm": ("RLE Lossless", "RGB", IMAGE),
    "SC_rgb_rle_16bit.dcm": ("RLE Lossless", "RGB", IMAGE),
    "OBXXXX1A_rle.dcm": ("RLE Lossless", "PALETTE COLOR", IMAGE),
    # JPEG baseline (Pillow)
    "SC_rgb_dcmtk_+eb+cr.dcm": ("JPEG Baseline (Process 1)", "RGB", IMAGE),
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": ("JPEG Baseline (Process 1)", "YBR_FULL", IMAGE),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": ("JPEG Baseline (Process 1)", "YBR_FULL_422", IMAGE),
    "SC_rgb_small_odd_jpeg.dcm": ("JPEG Baseline (Process 1)", "YBR_FULL", IMAGE),
    # JPEG extended 12-bit, JPEG lossless, JPEG-LS: no decoder installed here
    "JPGExtended.dcm": ("JPEG Extended (Process 2 and 4)", "MONOCHROME2", "transfer syntax JPEG Extended"),
    "JPEG-lossy.dcm": ("JPEG Extended (Process 2 and 4)", "MONOCHROME2", "transfer syntax JPEG Extended"),
    "JPEG-LL.dcm": ("JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
                    "MONOCHROME2", "transfer syntax JPEG Lossless"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ("JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 "
                                       "[Selection Value 1])", "MONOCHROME2", "transfer syntax JPEG Lossless"),
    "MR_small_jpeg_ls_lossless.dcm": ("JPEG-LS Lossless Image Compression", "MONOCHROME2",
                                      "transfer syntax JPEG-LS Lossless"),
    "JPEGLSNearLossless_08.dcm": ("JPEG-LS Lossy (Near-Lossless) Image Compression", "MONOCHROME2",
                                  "transfer syntax JPEG-LS Lossy"),
    # JPEG 2000
    "RG1_J2KR.dcm": ("JPEG 2000 Image Compression (Lossless Only)", "MONOCHROME1", IMAGE),
    "RG1_J2KI.dcm": ("JPEG 2000 Image Compression", "MONOCHROME1", IMAGE),
    "MR_small_jp2klossless.dcm": ("JPEG 2000 Image Compression (Lossless Only)", "MONOCHROME2", IMAGE),
    "J2K_pixelrep_mismatch.dcm": ("JPEG 2000 Image Compression (Lossless Only)", "MONOCHROME2", IMAGE),
    "US1_J2KR.dcm": ("JPEG 2000 Image Compression (Lossless Only)", "YBR_RCT", IMAGE),
    "US1_J2KI.dcm": ("JPEG 2000 Image Compression", "YBR_ICT", IMAGE),
    "SC_rgb_gdcm_KY.dcm": ("JPEG 2000 Image Compression", "RGB", IMAGE),
    # Multi-frame
    "emri_small.dcm": ("Explicit VR Little Endian", "MONOCHROME2", IMAGE),
    "emri_small_big_endian.dcm": ("Explicit VR Big Endian", "MONOCHROME2", IMAGE),
    "emri_small_RLE.dcm": ("RLE Lossless", "MONOCHROME2", IMAGE),
    "emri_small_jpeg_2k_lossless.dcm": ("JPEG 2000 Image Compression (Lossless Only)", "MONOCHROME2", IMAGE),
    "emri_small_jpeg_ls_lossless.dcm": ("JPEG-LS Lossless Image Compression", "MONOCHROME2",
                                        "transfer syntax JPEG-LS Lossless"),
    "SC_rgb_2frame.dcm": ("Explicit VR Little Endian", "RGB", IMAGE),
    "OBXXXX1A_2frame.dcm": ("Explicit VR Little Endian", "PALETTE COLOR", IMAGE),
    "color3d_jpeg_baseline.dcm": ("JPEG Baseline (Process 1)", "YBR_FULL_422",
                                  "cine loop (120 frames, FrameTime): a sequence over time, not one chest image"),
    "eCT_Supplemental.dcm": ("Explicit VR Little Endian", "MONOCHROME2",
                             "multi-frame (2 frames) whose per-frame ImagePositionPatient differs"),
    "liver.dcm": ("Explicit VR Little Endian", "MONOCHROME2",
                  "multi-frame (3 frames) whose per-frame ImagePositionPatient differs"),
    "rtdose.dcm": ("Implicit VR Little Endian", "MONOCHROME2",
                   "multi-frame (15 frames) whose frames vary by GridFrameOffsetVector"),
}
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR"}


def expected_outcome(name: str, colour: str) -> str:
    _, photometric, outcome = FILES[name]
    if colour == "quarantine" and photometric in COLOUR:
        return f"colour image ({photometric}): set archive.colour: grey to ingest it as luminance"
    return outcome


def ingest(root: Path, out: Path, shard: str, colour: str) -> tuple[dict[str, str], int]:
    """dicom_id/stem -> IMAGE or its quarantine reason (index or decode), and the rows out."""
    result = index_shard(root, shard, SALT, out / f"{shard}.parquet", out / f"q{shard}.parquet", colour=colour)
    build_cxr_images(result.index, root, out / f"i{shard}.parquet", out / f"d{shard}.parquet", size=64, colour=colour)
    outcomes = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    decoded = pq.read_table(out / f"d{shard}.parquet").to_pylist()
    outcomes |= {Path(r["source_path"]).stem: r["reason"].removeprefix("decode failed: ") for r in decoded}
    outcomes |= {dicom_id: IMAGE for dicom_id in pq.read_table(out / f"i{shard}.parquet").column("dicom_id").to_pylist()}
    return outcomes, result.quarantine.num_rows + len(decoded) + pq.read_metadata(out / f"i{shard}.parquet").num_rows


def test_the_files_cover_every_encoding_the_installed_decoders_meet():
    syntaxes = {syntax.split(" (")[0].split(",")[0] for syntax, _, _ in FILES.values()}
    assert syntaxes == {"Explicit VR Little Endian", "Implicit VR Little Endian", "Explicit VR Big Endian",
                        "Deflated Explicit VR Little Endian", "RLE Lossless", "JPEG Baseline", "JPEG Extended",
                        "JPEG Lossless", "JPEG-LS Lossless Image Compression",
                        "JPEG-LS Lossy", "JPEG 2000 Image Compression"}
    assert {p for _, p, _ in FILES.values()} >= COLOUR | {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.parametrize("colour", ["grey", "quarantine"])
@pytest.mark.parametrize("name", list(FILES))
def test_each_file_becomes_an_image_or_a_precise_quarantine_row(tmp_path, name, colour):
    root = tmp_path / "archive"
    path = chest_dx_copy(get_testdata_file(name), mimic_path(root, 10000001, 50000001, "file"))
    syntax, photometric, _ = FILES[name]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.file_meta.TransferSyntaxUID.name, ds.get("PhotometricInterpretation")) == (syntax, photometric)
    outcomes, rows_out = ingest(root, tmp_path / "out", "p10", colour)
    assert rows_out == 1  # nothing lost, nothing counted twice
    assert outcomes["file"].startswith(expected_outcome(name, colour)), outcomes["file"]
    if outcomes["file"].startswith("transfer syntax"):  # the fix is in the reason
        assert NO_DECODER in outcomes["file"] or PILLOW_12_BIT in outcomes["file"]


def test_all_of_them_in_one_shard_none_lost(tmp_path):
    """Together, duplicates among them (the same pixels stored twice) are one more precise reason."""
    root = tmp_path / "archive"
    for number, name in enumerate(FILES):
        chest_dx_copy(get_testdata_file(name), mimic_path(root, 10000000 + number, 50000000 + number, f"f{number:02d}"))
    outcomes, rows_out = ingest(root, tmp_path / "out", "p10", "grey")
    assert rows_out == len(FILES) == len(outcomes)
    for number, name in enumerate(FILES):
        outcome = outcomes[f"f{number:02d}"]
        assert outcome.startswith((expected_outcome(name, "grey"), "duplicate pixel data (sha256) of ")), (name, outcome)
