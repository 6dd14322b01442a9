"""Real-world archives: whatever one file's header holds, that file is quarantined with a
precise reason and the rest of its shard is indexed and decoded."""

from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame

from ingestion.decode import decode_dicom
from ingestion.failures import FileProblem, describe_failure
from ingestion.images import build_cxr_images
from ingestion.shards import index_shard
from tests.dicom_factory import (BIRTH_DATE, PATIENT_ID, PATIENT_NAME, chest_like, mimic_path, set_raw_element,
                                 write_dicom)

SALT = b"salt"

# name -> (how the file is spoiled, the start of its quarantine reason)
MALFORMED = {
    "frames_1a": (lambda p: set_raw_element(p, "NumberOfFrames", "IS", b"1A"),
                  "NumberOfFrames: ValueError: invalid literal for int() with base 10: '1A'"),
    "rows_zero": (lambda p: set_raw_element(p, "Rows", "US", b"\x00\x00"),
                  "Rows 0: an image size must be between 1 and 65535"),
    "columns_two_values": (lambda p: set_raw_element(p, "Columns", "US", b"\x70\x00\x70\x00"),
                           "Columns: ValueError: 2 values where one is expected"),
    "bits_allocated_12": (lambda p: set_raw_element(p, "BitsAllocated", "US", b"\x0c\x00"),
                          "BitsAllocated 12: pydicom decodes 1, 8, 16, 32 bits only"),
    "photometric_unknown": (lambda p: set_raw_element(p, "PhotometricInterpretation", "CS", b"HSV"),
                            "PhotometricInterpretation 'HSV', expected one of"),
    "window_garbage": (lambda p: set_raw_element(p, "WindowCenter", "DS", b"abc"),
                       "WindowCenter: ValueError: could not convert string to float: 'abc'"),
    # BitsStored under another VR than the dictionary's, holding text: a wrong VR and value at once.
    "bad_vr": (lambda p: set_raw_element(p, "BitsStored", "LO", b"twelve"),
               "BitsStored: ValueError: invalid literal for int() with base 10: 'twelve'"),
    "truncated_native": (lambda p: p.write_bytes(p.read_bytes()[:-5000]), "truncated Pixel Data: "),
}


def _truncate_jpeg2000(path: Path) -> None:
    """A real JPEG 2000 radiograph whose codestream lost its second half (a broken transfer)."""
    ds = pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, BIRTH_DATE
    ds.save_as(path)


@pytest.fixture()
def shard(tmp_path: Path) -> Path:
    """Shard p10: two good images, every malformed file above and a truncated JPEG 2000 file."""
    root = tmp_path / "archive"
    write_dicom(mimic_path(root, 10000001, 50000001, "good0001"), chest_like(seed=1))
    write_dicom(mimic_path(root, 10000001, 50000001, "good0002"), chest_like(seed=2), view="AP", window=(1500, 3000))
    for number, (name, (spoil, _)) in enumerate(MALFORMED.items(), 3):
        path = mimic_path(root, 10000000 + number, 50000000 + number, name)
        spoil(write_dicom(path, chest_like(seed=number), window=(1500, 3000)))
    truncated = mimic_path(root, 10000099, 50000099, "truncated_j2k")
    truncated.parent.mkdir(parents=True)
    _truncate_jpeg2000(truncated)
    return root


def test_each_malformed_file_is_quarantined_and_the_good_files_index_and_decode(shard, tmp_path):
    out = tmp_path / "out"
    result = index_shard(shard, "p10", SALT, out / "index.parquet", out / "quarantine.parquet")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert set(reasons) == set(MALFORMED)
    for name, (_, expected) in MALFORMED.items():
        assert reasons[name].startswith(expected), (name, reasons[name])
    # The JPEG 2000 stream is cut inside its tiles: only decoding finds out, and says so.
    assert sorted(result.index.column("dicom_id").to_pylist()) == ["good0001", "good0002", "truncated_j2k"]

    images = build_cxr_images(result.index, shard, out / "images.parquet", out / "decode_quarantine.parquet", size=32)
    decode_reasons = {Path(r["source_path"]).stem: r["reason"]
                      for r in pq.read_table(out / "decode_quarantine.parquet").to_pylist()}
    assert images.images == 2 and list(decode_reasons) == ["truncated_j2k"]
    assert decode_reasons["truncated_j2k"].startswith("decode failed: PixelData: RuntimeError: Unable to decode")
    assert 2 + len(MALFORMED) + 1 == images.images + len(decode_reasons) + result.quarantine.num_rows


@pytest.mark.parametrize("name", list(MALFORMED))
def test_decoding_a_malformed_file_directly_fails_with_the_index_reason(tmp_path, name):
    spoil, expected = MALFORMED[name]
    path = write_dicom(tmp_path / f"{name}.dcm", window=(1500, 3000))
    spoil(path)
    with pytest.raises(FileProblem) as raised:
        decode_dicom(path, 32)
    assert describe_failure(raised.value, ()).startswith(expected)


def test_an_exception_escaping_the_indexer_is_one_files_quarantine_row(shard, tmp_path, monkeypatch):
    import ingestion.shards as shards

    real = shards.index_dicom

    def flaky(path, *args, **kwargs):
        if path.stem == "good0002":
            raise RuntimeError("indexer bug")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shards, "index_dicom", flaky)
    out = tmp_path / "out"
    result = index_shard(shard, "p10", SALT, out / "index.parquet", out / "quarantine.parquet")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert reasons["good0002"] == "indexing failed: RuntimeError: indexer bug"
    assert "good0001" in result.index.column("dicom_id").to_pylist()


# --- no reason quotes an identifier ---------------------------------------------------------

IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "QUIXOTE", "ALONSO")


@pytest.mark.parametrize("keyword, vr, planted, expected", [
    # pydicom's own message would quote the value, which is the patient's surname
    ("WindowCenter", "DS", b"QUIXOTE", "WindowCenter: ValueError: (message withheld: it quotes a patient identifier)"),
    ("NumberOfFrames", "IS", PATIENT_ID.encode(), "NumberOfFrames: ValueError: (message withheld"),
    # our own reason would quote the value, which is the patient ID
    ("PhotometricInterpretation", "CS", PATIENT_ID.encode(), "PhotometricInterpretation: (message withheld"),
])
def test_a_reason_that_would_quote_an_identifier_keeps_only_the_element_and_the_type(tmp_path, keyword, vr, planted,
                                                                                        expected):
    root = tmp_path / "archive"
    write_dicom(mimic_path(root, 10000001, 50000001, "good0001"), chest_like(seed=1))
    spoilt = set_raw_element(write_dicom(mimic_path(root, 10000002, 50000002, "spoilt"), chest_like(seed=2),
                                         window=(1500, 3000)), keyword, vr, planted)
    out = tmp_path / "out"
    result = index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet")
    [reason] = result.quarantine.column("reason").to_pylist()
    assert reason.startswith(expected)
    assert not any(secret.lower() in reason.lower() for secret in IDENTIFIERS)
    # The decode stage, reading the file without the index's verdict, withholds it as well.
    from ingestion.images import DecodeTask, decode_task

    task = DecodeTask(str(spoilt), "spoilt.dcm", "dicom", 32, False, ("spoilt", "s", "k", "PA", "sha"))
    _, pixels, error = decode_task(task)
    assert pixels is None and error.startswith(f"decode failed: {expected}")
    assert not any(secret.lower() in error.lower() for secret in IDENTIFIERS)


def test_failure_descriptions_cut_identifiers_and_unknown_quoted_values():
    from ingestion.failures import HeaderProblem

    pairs = [("PatientName", PATIENT_NAME), ("PatientID", PATIENT_ID), ("PatientBirthDate", BIRTH_DATE)]
    for message in (f"bad value {PATIENT_NAME!r}", "no such patient alonso", f"id {PATIENT_ID} unknown",
                    "born 1947-09-23", "born 23 Sep 1947"):
        assert describe_failure(ValueError(message), pairs) == "ValueError: (message withheld: it quotes a patient identifier)"
    assert describe_failure(ValueError("Rows must be positive"), pairs) == "ValueError: Rows must be positive"
    # An identifier element's own failure never shows its message, whatever it says.
    assert describe_failure(HeaderProblem("PatientBirthDate", ValueError("bad")), ()) == (
        "PatientBirthDate: ValueError: (message withheld: it quotes a patient identifier)")
    # The header could not be read, so the identifiers are unknown: every quoted value goes.
    assert describe_failure(EOFError("unexpected end reading 'QUIXOTE^ALONSO' at 0x80"), None) == (
        "EOFError: unexpected end reading '…' at 0x80")


def test_an_unreadable_file_is_recorded_without_its_path_in_the_reason(shard, tmp_path, monkeypatch):
    import ingestion.dicom_index as dicom_index

    real = dicom_index.file_sha256

    def refuse(path):
        if Path(path).stem == "good0002":  # as a file without read permission would
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(dicom_index, "file_sha256", refuse)
    out = tmp_path / "out"
    result = index_shard(shard, "p10", SALT, out / "index.parquet", out / "quarantine.parquet")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert reasons["good0002"] == "cannot read: PermissionError: [Errno 13] Permission denied: '…'"
    assert "good0001" in result.index.column("dicom_id").to_pylist()


# --- a file that kills its decoder process, a header claiming a huge image -----------------

def decode_or_crash(task):
    """decode_task, except that the file named `crashes` segfaults the process decoding it, as a
    C decoder might (module level: the spawned workers import it)."""
    import os
    import signal

    from ingestion.images import decode_task

    if Path(task.source_path).stem == "crashes":
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_task(task)


def test_a_file_that_crashes_the_decoder_process_is_one_quarantine_row(tmp_path, monkeypatch):
    import pyarrow.compute as pc

    import ingestion.images as images

    root, out = tmp_path / "archive", tmp_path / "out"
    for number, name in enumerate(["good0001", "good0002", "crashes", "good0003", "good0004", "good0005"], 1):
        write_dicom(mimic_path(root, 10000000 + number, 50000000 + number, name), chest_like(seed=number))
    index = index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet").index
    monkeypatch.setattr(images, "MIN_IMAGES_PER_WORKER", 1)  # two worker processes for these six files
    result = build_cxr_images(index, root, out / "images.parquet", out / "decode_quarantine.parquet", size=32,
                              workers=2, decode=decode_or_crash)
    [row] = pq.read_table(out / "decode_quarantine.parquet").to_pylist()
    assert (row["source_path"], row["stage"]) == ("files/p10/p10000003/s50000003/crashes.dcm", "decode")
    assert row["reason"] == ("decode crashed the decoder process (worker process died (exit code -11 / SIGSEGV)); "
                             "the file is kept out, nothing else of the shard is lost")
    assert result.images == 5 and result.quarantined == 1
    # The other files' rows are those of a decode without the crashing file, in the same order.
    others = index.filter(pc.field("dicom_id") != "crashes")
    build_cxr_images(others, root, out / "reference.parquet", out / "reference_quarantine.parquet", size=32)
    assert pq.read_table(out / "images.parquet").equals(pq.read_table(out / "reference.parquet"))


def _claiming(path: Path, **header) -> Path:
    """`path` rewritten with these header values; its Pixel Data stays the small one it has."""
    ds = pydicom.dcmread(path)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_a_header_claiming_a_huge_image_is_quarantined_before_any_decoder_allocates_it(tmp_path):
    from pydicom.uid import RLELossless

    root, out = tmp_path / "archive", tmp_path / "out"
    write_dicom(mimic_path(root, 10000001, 50000001, "good0001"), chest_like(seed=1))
    # RLE: compressed, so nothing in the file's length gives the lie away before a decode of
    # 65535 x 65535 x 16 bits (8 GiB), or of 100 frames of 4000 x 4000 (3.2 GB).
    for number, name, header in [(2, "huge_frame", {"Rows": 65535, "Columns": 65535}),
                                 (3, "many_frames", {"Rows": 4000, "Columns": 4000, "NumberOfFrames": 100})]:
        path = write_dicom(mimic_path(root, 10000000 + number, 50000000 + number, name), chest_like(seed=number),
                           transfer_syntax=RLELossless)
        _claiming(path, **header)
    result = index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet")
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert reasons == {
        "huge_frame": "image too large: Rows x Columns 65535 x 65535 = 4,294,836,225 pixels per frame, over the "
                      "limit of 100,000,000 (archive.max_image_pixels); raise archive.max_image_pixels if the image "
                      "is real",
        "many_frames": "Pixel Data too large: 4000 x 4000 x 100 frame(s) x 1 sample(s) x 2 byte(s) = 3,200,000,000 "
                       "bytes decoded, over the limit of 800,000,000 (8 bytes per pixel of archive.max_image_pixels); "
                       "raise archive.max_image_pixels if the image is real"}
    assert result.index.column("dicom_id").to_pylist() == ["good0001"]
    images = build_cxr_images(result.index, root, out / "images.parquet", out / "decode_quarantine.parquet", size=32)
    assert (images.images, images.quarantined) == (1, 0)

    # The limit is the caller's (archive.max_image_pixels): raised, the header passes the index.
    raised = index_shard(root, "p10", SALT, out / "raised.parquet", out / "raised_q.parquet", max_pixels=65535 ** 2)
    assert sorted(raised.index.column("dicom_id").to_pylist()) == ["good0001", "huge_frame", "many_frames"]
    # Lowered, rows indexed under the old limit are read again, not kept: 128 x 112 is now too large.
    lowered = index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet", max_pixels=10_000)
    assert lowered.index.num_rows == 0 and lowered.reused == 0


def test_the_decoder_checks_a_changed_file_against_the_archives_own_size_limit(tmp_path):
    """A file decoded without the index's check (changed since, or no index) meets the limit the
    archive set, not the default: at the limit it decodes, one pixel under it is refused."""
    path = write_dicom(mimic_path(tmp_path, 10000001, 50000001, "small"), chest_like(seed=1))
    header = pydicom.dcmread(path, stop_before_pixels=True)
    rows, columns = int(header.Rows), int(header.Columns)
    assert decode_dicom(path, 32, max_pixels=rows * columns).shape == (32, 32)  # exactly at the limit
    with pytest.raises(FileProblem, match="image too large.*archive.max_image_pixels"):
        decode_dicom(path, 32, max_pixels=rows * columns - 1)
