from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ingestion.decode import decode_dicom
from tests.dicom_factory import chest_like, write_dicom

SIZE = 224


def lung_and_mediastinum_means(image: np.ndarray) -> tuple[float, float]:
    h, w = image.shape
    band = slice(int(0.3 * h), int(0.5 * h))
    lungs = np.concatenate([image[band, int(0.2 * w): int(0.33 * w)], image[band, int(0.67 * w): int(0.8 * w)]])
    mediastinum = image[band, int(0.46 * w): int(0.54 * w)]
    return float(lungs.mean()), float(mediastinum.mean())


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"])
def test_real_monochrome1_radiograph_has_lungs_darker_than_mediastinum(name):
    image = decode_dicom(get_testdata_file(name), SIZE)
    assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
    lungs, mediastinum = lung_and_mediastinum_means(image)
    assert lungs + 20 < mediastinum


def test_jpeg2000_twins_decode_like_the_uncompressed_original():
    plain = decode_dicom(get_testdata_file("RG1_UNCR.dcm"), SIZE).astype(int)
    lossless = decode_dicom(get_testdata_file("RG1_J2KR.dcm"), SIZE).astype(int)
    lossy = decode_dicom(get_testdata_file("RG1_J2KI.dcm"), SIZE).astype(int)
    assert np.abs(plain - lossless).max() <= 1
    assert np.abs(plain - lossy).mean() < 3


def test_monochrome1_is_inverted(tmp_path):
    image = chest_like()
    m2 = decode_dicom(write_dicom(tmp_path / "m2.dcm", image, photometric="MONOCHROME2"), 64)
    m1 = decode_dicom(write_dicom(tmp_path / "m1.dcm", image, photometric="MONOCHROME1"), 64)
    assert np.abs(m1.astype(int) - m2.astype(int)).max() <= 2


@pytest.mark.parametrize("bits", [12, 15, 16])
def test_bit_depths_give_the_same_display(tmp_path, bits):
    reference = decode_dicom(write_dicom(tmp_path / "ref.dcm", bits_stored=12), 64).astype(int)
    other = decode_dicom(write_dicom(tmp_path / f"b{bits}.dcm", bits_stored=bits), 64).astype(int)
    assert np.abs(reference - other).max() <= 2


def test_voi_window_is_applied(tmp_path):
    # A narrow window centred on the lungs saturates the mediastinum to white.
    top = 2**12 - 1
    windowed = decode_dicom(write_dicom(tmp_path / "w.dcm", window=(0.15 * top, 0.3 * top)), 64)
    plain = decode_dicom(write_dicom(tmp_path / "p.dcm"), 64)
    lungs_w, _ = lung_and_mediastinum_means(windowed)
    lungs_p, _ = lung_and_mediastinum_means(plain)
    assert lungs_w > lungs_p + 40  # lungs stretched over the full range
    assert (windowed == 255).mean() > 0.5


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "window", "monochrome1"])
def test_lookup_table_path_equals_applying_the_luts_to_every_pixel(tmp_path, name):
    import pydicom

    from ingestion.decode import _display_direct, display_uint8, to_uint8

    if name == "window":
        path = write_dicom(tmp_path / "w.dcm", bits_stored=16, window=(20000, 30000))
    elif name == "monochrome1":
        path = write_dicom(tmp_path / "m1.dcm", photometric="MONOCHROME1", bits_stored=15)
    else:
        path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    # Float input takes the per-pixel path.
    direct = to_uint8(_display_direct(pixels.astype(np.float64), ds)).astype(int)
    via_table = display_uint8(pixels, ds)
    assert via_table.dtype == np.uint8 and via_table.shape == pixels.shape
    difference = np.abs(via_table.astype(int) - direct)
    # Percentiles agree to ~1e-5, so only a value sitting on a rounding edge may move by one level.
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def _agreement(fast: np.ndarray, full: np.ndarray) -> tuple[int, float]:
    difference = np.abs(fast.astype(int) - full.astype(int))
    return int(difference.max()), float((difference <= 1).mean())


@pytest.fixture(scope="module")
def full_size_radiograph(tmp_path_factory) -> Path:
    """A MIMIC-sized (2,544 x 3,056, 12-bit) radiograph, uncompressed."""
    return write_dicom(tmp_path_factory.mktemp("full") / "full.dcm", chest_like(3056, 2544, seed=3))


@pytest.mark.parametrize("name", ["full_size", "RG1_UNCR.dcm", "monochrome1", "window", "sigmoid"])
@pytest.mark.parametrize("size", [448, 224])
def test_fast_path_equals_the_full_resolution_path_to_one_grey_level(tmp_path, full_size_radiograph, name, size):
    if name == "full_size":
        path = full_size_radiograph
    elif name == "monochrome1":
        path = write_dicom(tmp_path / "m1.dcm", chest_like(1500, 1200, seed=4), photometric="MONOCHROME1", bits_stored=15)
    elif name == "window":
        path = write_dicom(tmp_path / "w.dcm", chest_like(1500, 1200, seed=5), bits_stored=16, window=(20000, 30000))
    elif name == "sigmoid":  # a non-linear window at MIMIC size: full-resolution LUT, sampled percentiles
        import pydicom

        path = write_dicom(tmp_path / "s.dcm", chest_like(3056, 2544, seed=7), window=(2000, 3000))
        ds = pydicom.dcmread(path)
        ds.VOILUTFunction = "SIGMOID"
        ds.save_as(path)
    else:
        path = get_testdata_file(name)
    worst, within_one = _agreement(decode_dicom(path, size), decode_dicom(path, size, fast=False))
    assert within_one >= 0.999, f"{name}: only {within_one:.4%} within one grey level (max {worst})"


def test_fast_path_pads_to_square_like_the_full_resolution_path(full_size_radiograph):
    fast = decode_dicom(full_size_radiograph, 224, pad_to_square=True)
    full = decode_dicom(full_size_radiograph, 224, pad_to_square=True, fast=False)
    assert fast[:, :10].max() == 0  # the padding is black
    assert _agreement(fast, full)[1] >= 0.999


def test_non_linear_voi_lut_takes_the_exact_path(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "sig.dcm", chest_like(600, 500, seed=6), window=(1500, 2000))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    from ingestion.decode import _linear_display

    assert _linear_display(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path)) is None
    assert np.array_equal(decode_dicom(path, 128), decode_dicom(path, 128, fast=False))


@pytest.mark.parametrize("windowed", [True, False])
def test_reduced_jpeg2000_level_equals_the_full_decode_at_mimic_size(tmp_path, windowed):
    """The issue's bar: one level down, at 448 px from a MIMIC-CXR-size radiograph (the real RG1
    radiograph at 2,544 x 3,056 with detector-like noise, JPEG 2000 lossless; its own window, or
    none so the percentile stretch decides), within one grey level of the full decode on >= 99.9%."""
    import pydicom

    from corpus.full_resolution import full_resolution_copy

    source = Path(get_testdata_file("RG1_UNCR.dcm"))
    if not windowed:
        ds = pydicom.dcmread(source)
        del ds.WindowCenter, ds.WindowWidth
        source = tmp_path / "plain.dcm"
        ds.save_as(source)
    path = full_resolution_copy(source, tmp_path / "j2k.dcm", (2544, 3056), "jpeg2000")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    reduced = decode_dicom(path, 448, reduce_jpeg2000=True)
    worst, within_one = _agreement(reduced, decode_dicom(path, 448, fast=False))
    assert within_one >= 0.999, f"only {within_one:.4%} within one grey level (max {worst})"


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_J2KI.dcm"])
def test_reduced_jpeg2000_level_stays_close_to_the_full_decode(name):
    """A real radiograph smaller than MIMIC-CXR's (1,955 x 1,841: the level is only 2.05x the
    target): measured 99.76% (lossless) and 99.90% (lossy) within one grey level, max 6 - what
    the opt-in's documentation promises; a misplaced resize box (half a block, or the level's
    own width instead of the image's) drops this below 99%."""
    path = get_testdata_file(name)
    reduced = decode_dicom(path, 448, reduce_jpeg2000=True)
    full = decode_dicom(path, 448, fast=False)
    worst, within_one = _agreement(reduced, full)
    assert within_one >= 0.995 and worst <= 8
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 0.4
    lungs, mediastinum = lung_and_mediastinum_means(reduced)
    assert lungs + 20 < mediastinum


def test_jpeg2000_reduced_levels_are_only_used_when_the_target_allows():
    import pydicom

    from ingestion.decode import _reduced_j2k_pixels

    ds = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))  # 1955 x 1841
    arr, levels = _reduced_j2k_pixels(ds, 448)
    assert levels == 1 and arr.shape == (978, 921)
    # The level's values are the stored values' scale (Pillow's 16-bit scaling undone).
    assert abs(float(arr.mean()) - float(ds.pixel_array.mean())) < 0.01 * float(ds.pixel_array.mean())
    assert _reduced_j2k_pixels(ds, 1000) is None  # no level keeps 2x the target
    assert _reduced_j2k_pixels(ds, 224)[1] == 1  # two levels would qualify: one is the most taken
    plain = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    assert _reduced_j2k_pixels(plain, 224) is None


@pytest.mark.parametrize("bits", [12, 15, 16])
def test_native_pixel_view_is_exactly_pydicoms_pixel_array(tmp_path, bits):
    import pydicom

    from ingestion.decode import _native_pixels

    ds = pydicom.dcmread(write_dicom(tmp_path / f"b{bits}.dcm", chest_like(300, 200), bits_stored=bits))
    view = _native_pixels(ds)
    assert view is not None and np.array_equal(view, ds.pixel_array) and view.dtype == ds.pixel_array.dtype
    assert _native_pixels(pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))) is None  # compressed: pydicom


def test_bits_above_bits_stored_leave_the_native_view_to_pydicom(tmp_path):
    import pydicom

    from ingestion.decode import _native_pixels

    path = write_dicom(tmp_path / "o.dcm", chest_like(64, 64), bits_stored=12)
    ds = pydicom.dcmread(path)
    raw = np.frombuffer(ds.PixelData, "<u2").copy()
    raw[0] |= 0x8000  # an overlay bit in the unused high bits
    ds.PixelData = raw.tobytes()
    assert _native_pixels(ds) is None
