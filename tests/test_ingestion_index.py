from pathlib import Path

import pyarrow.parquet as pq

from ingestion.shards import index_shard
from tests.archive_factory import build_archive
from tests.dicom_factory import BIRTH_DATE, PATIENT_ID, PATIENT_NAME

SALT = b"salt"


def run_index(tmp_path: Path, shard: str = "p10"):
    root = tmp_path / "archive"
    build_archive(root)
    out = tmp_path / "out"
    return index_shard(root, shard, SALT, out / "index.parquet", out / "quarantine.parquet"), out


def test_corrupt_inputs_are_quarantined_with_reasons(tmp_path):
    result, _ = run_index(tmp_path)
    assert result.index.num_rows == 3
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert set(reasons) == {"bad00001", "bad00002", "bad00003", "bad00004", "bad00005"}
    assert reasons["bad00001"].startswith("not a DICOM file")
    assert reasons["bad00002"] == "empty file (0 bytes)"
    assert "truncated Pixel Data" in reasons["bad00003"]
    assert "no Pixel Data" in reasons["bad00004"]
    assert "JPEG-LS" in reasons["bad00005"] and "decoder" in reasons["bad00005"]


def test_index_rows_carry_ids_geometry_and_normalised_views(tmp_path):
    result, _ = run_index(tmp_path)
    rows = {r["dicom_id"]: r for r in result.index.to_pylist()}
    assert rows["aaaa0002"]["view_position"] == "LATERAL"  # LL normalised
    assert rows["aaaa0002"]["photometric_interpretation"] == "MONOCHROME1"
    assert rows["aaaa0003"]["has_voi"] and rows["aaaa0003"]["bits_stored"] == 16
    assert rows["aaaa0001"]["study_id"] == "50000001"
    assert len(rows["aaaa0001"]["file_sha256"]) == 64
    # Same patient -> same key; different patient -> different key.
    assert rows["aaaa0001"]["patient_key"] == rows["aaaa0002"]["patient_key"] != rows["aaaa0003"]["patient_key"]


def test_identifiers_never_reach_parquet(tmp_path):
    result, out = run_index(tmp_path)
    assert PATIENT_ID in result.identifier_values  # they were seen...
    for path in out.glob("*.parquet"):
        raw = path.read_bytes()
        text = pq.read_table(path).to_pandas().to_string() if pq.read_table(path).num_rows else ""
        for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "QUIXOTE", "ALONSO"):
            assert secret.encode() not in raw and secret not in text  # ...but never written
