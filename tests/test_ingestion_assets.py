"""The ingestion assets materialised in a real (temporary) Dagster instance."""

import dagster as dg
import pytest
import numpy as np
import pyarrow.parquet as pq

from assets.ingestion import cxr_images, dicom_index, reports
from assets.partitions import register_shards
from pipeline.definitions import defs
from assets.resources import ArchiveResource, StorageResource
from tests.archive_factory import build_archive
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME


def materialise_shard(home, archive_root, shard, instance, max_quarantine_rate=0.7):
    # The fixture shard is 5 broken files of 8 on purpose; tests/test_faults.py covers the default limit.
    register_shards(instance, [shard])
    return dg.materialize(
        [dicom_index, cxr_images, reports],
        partition_key=shard,
        instance=instance,
        resources={"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive_root))},
        run_config={"ops": {"cxr_images": {"config": {"image_size": 64, "workers": 1, "row_group_size": 2}},
                            "dicom_index": {"config": {"max_quarantine_rate": max_quarantine_rate}}}},
    )


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    assert {"dicom_index", "cxr_images", "reports"} <= {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_ingestion_assets_materialise_with_checks_and_quarantine(home, tmp_path):
    archive = tmp_path / "archive"
    build_archive(archive)
    with dg.instance_for_test() as instance:
        result = materialise_shard(home, archive, "p10", instance)
        assert result.success
        index_meta = result.asset_materializations_for_node("dicom_index")[0].metadata
        assert index_meta["dagster/row_count"].value == 3
        assert index_meta["quarantined"].value == 5
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["no_identifier_leaks"].passed
        assert checks["quarantine_rate"].passed  # 5 of 8 files are broken here, under the test's limit
        assert checks["quarantine_rate"].metadata["rate"].value == 0.625
        assert checks["every_imaged_study_has_a_report"].passed

        images = pq.read_table(home / "data" / "cxr_images" / "p10.parquet")
        assert images.num_rows == 3
        assert pq.ParquetFile(home / "data" / "cxr_images" / "p10.parquet").num_row_groups == 2
        first = images.slice(0, 1).to_pylist()[0]
        assert len(first["pixels"]) == 64 * 64 and first["height"] == 64

        report_rows = pq.read_table(home / "data" / "reports" / "p10.parquet").to_pylist()
        assert {r["study_id"] for r in report_rows} == {"50000001", "50000002", "50000003", "50000004"}
        assert [r["usable"] for r in report_rows if r["study_id"] == "50000003"] == [False]

        for path in (home / "data").rglob("*.parquet"):
            raw = path.read_bytes()
            assert PATIENT_ID.encode() not in raw and PATIENT_NAME.split("^")[0].encode() not in raw


def test_real_radiograph_shard_ingests_and_looks_right(home, tmp_path):
    archive = tmp_path / "archive"
    build_archive(archive)
    with dg.instance_for_test() as instance:
        assert materialise_shard(home, archive, "p11", instance).success
        row = pq.read_table(home / "data" / "cxr_images" / "p11.parquet").to_pylist()[0]
        image = np.frombuffer(row["pixels"], np.uint8).reshape(64, 64)
        lungs = np.concatenate([image[20:32, 13:21], image[20:32, 43:51]]).mean()
        assert lungs + 20 < image[20:32, 29:35].mean()  # MONOCHROME1 inverted: lungs dark


def test_missing_report_fails_the_report_check(home, tmp_path):
    archive = tmp_path / "archive"
    build_archive(archive)
    (archive / "files" / "p10" / "p10000002" / "s50000002.txt").unlink()
    with dg.instance_for_test() as instance:
        result = materialise_shard(home, archive, "p10", instance)
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert not checks["every_imaged_study_has_a_report"].passed
        assert checks["every_imaged_study_has_a_report"].metadata["examples"].value == "50000002"


def test_a_failed_pixel_write_keeps_the_previous_shard_file_and_leaves_no_temp_files(home, tmp_path, monkeypatch):
    from ingestion.images import build_cxr_images
    from ingestion.shards import index_shard

    archive = tmp_path / "archive"
    build_archive(archive)
    out = tmp_path / "out"
    index = index_shard(archive, "p10", b"salt", out / "index.parquet", out / "index_q.parquet").index
    first = build_cxr_images(index, archive, out / "images.parquet", out / "q.parquet", size=32, row_group_size=1)
    assert first.images == 3
    before = (out / "images.parquet").read_bytes()

    calls = []

    def failing_write(self, batch, row_group_size=None):
        calls.append(batch.num_rows)
        if len(calls) == 2:  # the writer thread fails part-way through the shard
            raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing_write)
    with pytest.raises(OSError, match="No space left"):
        build_cxr_images(index, archive, out / "images.parquet", out / "q.parquet", size=48, row_group_size=1)
    assert len(calls) == 2  # stopped at the failure, not after decoding the rest
    assert (out / "images.parquet").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["images.parquet", "index.parquet", "index_q.parquet", "q.parquet"]
