"""The leak check finds identifiers where they really leak, and not in coincidences."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ingestion.identifiers import describe_leaks, find_leaks, identifier_signatures, written_dates
from ingestion.shards import index_shard
from tests.dicom_factory import chest_like, write_dicom

HEADERS = [
    ("PatientName", "Test^S R"),  # leaves one part of three letters or more: "test"
    ("OtherPatientNames", "QUIXOTE^ALONSO"),
    ("PatientID", "12345678"),
    ("OtherPatientIDs", "MRN-7712"),
    ("PatientBirthDate", "19210405"),
    ("PatientBirthDate", "21040522"),
]

# column -> (cell, the leak it holds: (kind, in the folder names) or None for a coincidence)
CELLS = {
    "name_whole": ("test^s r", ("name", False)),
    "name_spaced": ("TEST S R", ("name", False)),
    "name_parts_in_text": ("Seen: Alonso Quixote, ward 3", ("name", False)),
    "name_in_folders": ("files/QUIXOTE^ALONSO/s1/1.dcm", ("name", True)),
    "id_in_text": ("referred under 12345678 today", ("id", False)),
    "id_in_folders": ("export/12345678/study/1.dcm", ("id", True)),
    "id_file_name": ("export/study/12345678.dcm", ("id", False)),
    "id_with_separator": ("mrn 7712 on the request", ("id", False)),
    "date_alone": ("19210405", ("birth_date", False)),
    "date_iso": ("born 1921-04-05.", ("birth_date", False)),
    "date_us": ("DOB 04/05/1921", ("birth_date", False)),
    "date_european": ("DOB 5.4.1921", ("birth_date", False)),
    "date_words": ("born April 5th, 1921 in", ("birth_date", False)),
    "date_day_month": ("born 5 Apr 1921", ("birth_date", False)),
    # coincidences
    "single_part_name_in_path": ("files/p10/p10000001/s50000001/test.dcm", None),
    "single_part_name_in_text": ("a test of the pipeline", None),
    "split_column": ("test", None),
    "one_part_of_two": ("Don Quixote", None),
    "date_in_hex_id": ("b58f18e7-23e4dc06-9846239b-21040522-c0fbbefa", None),
    "date_in_uid": ("1.2.840.21040522.5", None),
    "date_digits_in_text": ("run 19210405 of the scanner", None),
    "date_other_day": ("born 1921-04-06", None),
    "id_inside_a_token": ("files/p12/p12345678/s1/1.dcm", None),
    "id_part": ("7712 images", None),
}


def _table(path: Path) -> Path:
    pq.write_table(pa.table({column: [None, "", cell] for column, (cell, _) in CELLS.items()}), path)
    return path


def test_each_kind_of_leak_is_found_and_no_coincidence_is(tmp_path):
    hits = find_leaks([_table(tmp_path / "out.parquet")], identifier_signatures(HEADERS))
    found = {h["column"]: (h["kind"], h["folder_names"]) for h in hits}
    assert found == {column: leak for column, (_, leak) in CELLS.items() if leak}
    assert all(h["row"] == 2 and h["file"] == "out.parquet" for h in hits)
    # Where, never what: no hit carries the value.
    assert {key for h in hits for key in h} == {"file", "column", "row", "kind", "folder_names"}
    assert not any(secret in repr(hits).lower() for secret in ("quixote", "12345678", "1921", "test^s"))


def test_bare_values_of_older_callers_are_read_by_their_shape(tmp_path):
    bare = identifier_signatures(["QUIXOTE^ALONSO", "12345678", "19210405"])
    assert bare.dates and bare.ids and bare.names
    hits = find_leaks([_table(tmp_path / "out.parquet")], bare)
    columns = {h["column"] for h in hits}
    assert {"name_parts_in_text", "id_in_folders", "date_iso"} <= columns
    assert not columns & {"date_in_hex_id", "date_in_uid", "one_part_of_two"}


def test_written_dates_are_read_both_ways_and_never_from_inside_a_token():
    import datetime

    assert set(written_dates("04/05/1921")) == {datetime.date(1921, 4, 5), datetime.date(1921, 5, 4)}
    assert list(written_dates("April 5, 1921")) == [datetime.date(1921, 4, 5)]
    assert list(written_dates("x1921-04-05 and 1.2.1921.04.05.1 and 1921-04-05z")) == []


def test_an_archive_whose_folders_carry_patient_names_is_reported_as_such(tmp_path):
    # A PACS export named after the patients: the pipeline writes the path, the folder leaks.
    root = tmp_path / "archive"
    path = root / "files" / "p10" / "p10000001" / "s50000001" / "QUIXOTE_ALONSO" / "a1.dcm"
    write_dicom(path, chest_like(seed=1))
    out = tmp_path / "out"
    result = index_shard(root, "p10", b"salt", out / "index.parquet", out / "quarantine.parquet")
    hits = find_leaks([out / "index.parquet", out / "quarantine.parquet"],
                      identifier_signatures(result.identifier_values))
    assert [(h["column"], h["kind"], h["folder_names"]) for h in hits] == [("source_path", "name", True)]
    assert "folder names carry identifiers: rename those folders" in describe_leaks(hits)
    assert "QUIXOTE" not in describe_leaks(hits)
