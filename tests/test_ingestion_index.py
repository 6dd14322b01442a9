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
    assert ("PatientID", PATIENT_ID) in result.identifier_values  # they were seen...
    for path in out.glob("*.parquet"):
        raw = path.read_bytes()
        text = pq.read_table(path).to_pandas().to_string() if pq.read_table(path).num_rows else ""
        for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "QUIXOTE", "ALONSO"):
            assert secret.encode() not in raw and secret not in text  # ...but never written


def test_a_rerun_reads_only_files_that_are_new_or_changed(tmp_path, monkeypatch):
    import os

    import ingestion.shards as shards

    first, out = run_index(tmp_path)
    read = []
    real_index_dicom = shards.index_dicom
    monkeypatch.setattr(shards, "index_dicom",
                        lambda path, *a, **k: read.append(path.name) or real_index_dicom(path, *a, **k))
    root, index_path, quarantine_path = tmp_path / "archive", out / "index.parquet", out / "quarantine.parquet"

    again = index_shard(root, "p10", SALT, index_path, quarantine_path)
    assert again.reused == 3 and again.index.to_pylist() == first.index.to_pylist()
    assert sorted(read) == sorted(Path(p).name for p in first.quarantine.column("source_path").to_pylist())

    changed = root / first.index.column("source_path")[0].as_py()
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: read again
    read.clear()
    touched = index_shard(root, "p10", SALT, index_path, quarantine_path)
    assert touched.reused == 2 and changed.name in read
    assert touched.index.to_pylist() == [dict(r, file_mtime_ns=stat.st_mtime_ns + 10**9) if r["source_path"].endswith(changed.name)
                                         else r for r in first.index.to_pylist()]

    # Another salt changes every patient key, a forced re-read ignores the previous index.
    assert index_shard(root, "p10", b"other", index_path, quarantine_path).reused == 0
    assert index_shard(root, "p10", SALT, index_path, quarantine_path).reused == 0  # the index has other keys
    assert index_shard(root, "p10", SALT, index_path, quarantine_path, reuse=False).reused == 0


def test_duplicates_across_shards_by_uid_or_pixels_keep_the_earlier_shard(tmp_path):
    import pyarrow as pa

    from ingestion.dicom_index import INDEX_SCHEMA, duplicates_across_shards

    def index(shard, rows):
        full = [{name: None for name in INDEX_SCHEMA.names} | {"shard": shard, "file_size": 1} | r for r in rows]
        path = tmp_path / f"{shard}.parquet"
        pq.write_table(pa.Table.from_pylist(full, schema=INDEX_SCHEMA), path)
        return path

    a = index("p10", [{"dicom_id": "a1", "source_path": "a/1.dcm", "sop_instance_uid": "1.1", "pixel_sha256": "x"},
                      {"dicom_id": "a2", "source_path": "a/2.dcm", "sop_instance_uid": "1.2", "pixel_sha256": "y"}])
    b = index("p11", [{"dicom_id": "b1", "source_path": "b/1.dcm", "sop_instance_uid": "9.9", "pixel_sha256": "y"},
                      {"dicom_id": "b2", "source_path": "b/2.dcm", "sop_instance_uid": "1.1", "pixel_sha256": "z"},
                      {"dicom_id": "b3", "source_path": "b/3.dcm", "sop_instance_uid": "9.8", "pixel_sha256": "w"}])
    quarantine, dropped = duplicates_across_shards([a, b])
    assert dropped == {"b1", "b2"}
    reasons = {r["source_path"]: r["reason"] for r in quarantine.to_pylist()}
    assert reasons == {"b/1.dcm": "duplicate pixel data (sha256) of a/2.dcm (another shard)",
                       "b/2.dcm": "duplicate SOPInstanceUID of a/1.dcm (another shard)"}
    assert duplicates_across_shards([b, a])[1] == {"a1", "a2"}  # the earlier shard in the list wins
