"""New studies arriving in the archive: the sensor ingests only their shards, then extraction."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from assets.ingestion import cxr_images, dicom_index, reports
from ingestion.layout import archive_shards, has_shard, iter_shard_files, shard_fingerprints, shard_outputs
from assets.resources import ArchiveResource, StorageResource
from pipeline.sensors import ARRIVAL_TAG, archive_arrival_sensor
from tests.dicom_factory import chest_like, mimic_path, write_dicom, write_report

INGEST_CONFIG = {"ops": {"cxr_images": {"config": {"image_size": 32, "workers": 1}}}}


def add_study(root, subject: int, study: int, images: int = 1) -> None:
    for n in range(images):
        # Distinct pixels: identical ones would be quarantined as duplicates.
        write_dicom(mimic_path(root, subject, study, f"img{study}{n}"), chest_like(seed=study * 10 + n))
    write_report(root, subject, study, f"FINDINGS: Study {study}. IMPRESSION: Mild cardiomegaly.")


def test_shards_are_subject_prefixes_and_stay_put_when_the_archive_grows(tmp_path):
    add_study(tmp_path, 10000001, 50000001)
    add_study(tmp_path, 10040001, 50000002)
    add_study(tmp_path, 11000001, 50000003)
    assert archive_shards(tmp_path) == ["p1000", "p1004", "p1100"]
    assert archive_shards(tmp_path, digits=2) == ["p10", "p11"]
    assert archive_shards(tmp_path, digits=3) == ["p100", "p110"]
    before = shard_fingerprints(tmp_path)
    add_study(tmp_path, 10040002, 50000004)  # a new subject in a known shard
    add_study(tmp_path, 12050001, 50000005)  # a new shard
    after = shard_fingerprints(tmp_path)
    assert archive_shards(tmp_path) == ["p1000", "p1004", "p1100", "p1205"]
    assert {s for s in after if before.get(s) != after[s]} == {"p1004", "p1205"}
    assert [p.name for p in iter_shard_files(tmp_path, "p1004", (".txt",))] == ["s50000002.txt", "s50000004.txt"]
    assert len(list(iter_shard_files(tmp_path, "p10", (".dcm",)))) == 3  # the whole folder
    assert has_shard(tmp_path, "p1205") and not has_shard(tmp_path, "p1999") and not has_shard(tmp_path, "p19")


def test_overlapping_shard_files_fail_in_one_line(tmp_path):
    for name in ("p10", "p1004", "p11"):
        (tmp_path / f"{name}.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="overlap"):
        shard_outputs(tmp_path)
    (tmp_path / "p10.parquet").unlink()
    assert [p.stem for p in shard_outputs(tmp_path)] == ["p1004", "p11"]


def run_requests(instance, cursor, resources):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = archive_arrival_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result.run_requests or [], result.cursor


def ingest(instance, shard, resources, tags):
    result = dg.materialize([dicom_index, cxr_images, reports], partition_key=shard, instance=instance,
                            resources=resources, run_config=INGEST_CONFIG, tags=tags)
    assert result.success


def test_arrival_sensor_ingests_only_the_shards_with_new_studies_then_extraction(home, tmp_path):
    archive = tmp_path / "archive"
    add_study(archive, 10000001, 50000001, images=2)
    add_study(archive, 10040001, 50000002)
    add_study(archive, 11000001, 50000003)
    resources = {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive))}
    with dg.instance_for_test() as instance:
        requests, cursor = run_requests(instance, None, resources)
        assert requests == []  # the first tick records the archive as it is
        assert sorted(instance.get_dynamic_partitions("archive_shards")) == ["p1000", "p1004", "p1100"]
        for shard in ("p1000", "p1004", "p1100"):  # the initial ingestion, as `medfilip run` does it
            ingest(instance, shard, resources, {})
        untouched = {s: (home / "data" / "cxr_images" / f"{s}.parquet").stat().st_mtime_ns for s in ("p1000", "p1100")}
        assert run_requests(instance, cursor, resources)[0] == []  # nothing new

        add_study(archive, 10040002, 50000004, images=2)
        add_study(archive, 12050001, 50000005)
        requests, cursor = run_requests(instance, cursor, resources)
        assert sorted((r.job_name, r.partition_key) for r in requests) == [("ingestion_job", "p1004"),
                                                                            ("ingestion_job", "p1205")]
        assert "p1205" in instance.get_dynamic_partitions("archive_shards")
        runs_before = len(instance.get_runs())
        for request in requests:
            ingest(instance, request.partition_key, resources, request.tags)
        assert len(instance.get_runs()) == runs_before + 2
        # The other shards' files were not touched: no run, no rewrite.
        assert {s: (home / "data" / "cxr_images" / f"{s}.parquet").stat().st_mtime_ns for s in untouched} == untouched
        # Within the re-run shard, only the new files were decoded: the known image was copied.
        for shard, rows, reused in (("p1004", 3, 1), ("p1205", 1, 0)):
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("cxr_images"), asset_partitions=[shard]), limit=5).records
            metadata = record[0].asset_materialization.metadata
            assert (metadata["dagster/row_count"].value, metadata["reused_unchanged"].value) == (rows, reused), shard
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("dicom_index"), asset_partitions=[shard]), limit=5).records
            metadata = record[0].asset_materialization.metadata
            # The index read only the new files too: the known one kept its row (same size and mtime).
            assert (metadata["files_read"].value, metadata["rows_reused"].value) == (rows - reused, reused), shard

        requests, cursor = run_requests(instance, cursor, resources)
        assert [r.job_name for r in requests] == ["extraction_job"]
        assert requests[0].tags[ARRIVAL_TAG].endswith("-extract")
        assert run_requests(instance, cursor, resources)[0] == []  # the batch is done
        assert json.loads(cursor)["pending"] is None


def test_a_rebuilt_shard_decodes_only_new_files_and_matches_a_full_decode(tmp_path):
    from common.storage import file_sha256
    from ingestion.images import build_cxr_images
    from ingestion.shards import index_shard

    archive = tmp_path / "archive"
    add_study(archive, 10040001, 50000001, images=3)

    def build(name: str, reuse: bool = True, size: int = 32):
        index = index_shard(archive, "p1004", b"salt", tmp_path / "i.parquet", tmp_path / "q.parquet").index
        return build_cxr_images(index, archive, tmp_path / f"{name}.parquet", tmp_path / "dq.parquet", size=size,
                                row_group_size=2, reuse=reuse)

    assert build("shard").reused == 0
    add_study(archive, 10040002, 50000000, images=2)  # sorts before the known study: reuse keeps index order
    again = build("shard")
    assert (again.images, again.reused) == (5, 3)
    assert file_sha256(tmp_path / "shard.parquet") == file_sha256(build("scratch", reuse=False).path)
    # Other decode settings: nothing stored may be reused.
    assert build("shard", size=24).reused == 0


def test_an_image_copied_into_another_shard_is_left_out_of_training_once(home, tmp_path):
    """Each shard's index drops its own duplicates; the same pixels in two shards (two patients)
    are only visible where the shards meet: training_texts leaves the later copy out, records it
    in quarantine/cross_shard, and the copy never reaches image_texts."""
    import shutil

    import pyarrow.parquet as pq

    from assets.extraction import llm_extractions, prompts, report_labels, triplets
    from assets.knowledge import knowledge_base, training_texts
    from assets.resources import ExtractorResource

    archive = tmp_path / "archive"
    add_study(archive, 10000001, 50000001, images=2)
    add_study(archive, 10040001, 50000002)
    original = mimic_path(archive, 10000001, 50000001, "img500000010")
    copy = mimic_path(archive, 10040001, 50000002, "copied")
    shutil.copyfile(original, copy)  # same file (same UID and pixels) under another patient
    resources = {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive)),
                 "extractor": ExtractorResource()}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("archive_shards", ["p1000", "p1004"])
        for shard in ("p1000", "p1004"):
            ingest(instance, shard, {k: resources[k] for k in ("storage", "archive")}, {})
        result = dg.materialize([prompts, llm_extractions, triplets, report_labels, knowledge_base, training_texts],
                                instance=instance, resources=resources)
        assert result.success
        metadata = result.asset_materializations_for_node("training_texts")[0].metadata
    assert metadata["duplicates_across_shards"].value == 1
    quarantined = pq.read_table(home / "data" / "quarantine" / "cross_shard" / "duplicates.parquet").to_pylist()
    assert [(r["shard"], r["source_path"].endswith("copied.dcm")) for r in quarantined] == [("p1004", True)]
    assert "SOPInstanceUID of files/p10/p10000001/s50000001/img500000010.dcm" in quarantined[0]["reason"]
    ids = set(pq.read_table(home / "data" / "training_texts" / "image_texts.parquet").column("dicom_id").to_pylist())
    assert ids == {"img500000010", "img500000011", "img500000020"}
