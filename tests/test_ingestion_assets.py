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
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, mimic_path, write_dicom


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
    from ingestion.shards import ID_LOCK_NAME, index_shard

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
    # No temp file left; the shards' id lock (index_shard's, beside the index) stays, as locks do.
    assert sorted(p.name for p in out.iterdir()) == [ID_LOCK_NAME, "images.parquet", "index.parquet",
                                                     "index_q.parquet", "q.parquet"]


# --- real-world archives through the real assets (issue 22) -----------------------------------

def ingest(home, archive_root, shard, instance, raise_on_error=True, **archive_fields):
    register_shards(instance, [shard])
    return dg.materialize(
        [dicom_index, cxr_images], partition_key=shard, instance=instance, raise_on_error=raise_on_error,
        resources={"storage": StorageResource(home=str(home)),
                   "archive": ArchiveResource(root=str(archive_root), **archive_fields)},
        run_config={"ops": {"cxr_images": {"config": {"image_size": 32, "workers": 1}}}},
    )


def outcome_of_every_file(home, shard) -> dict[str, str]:
    """source_path -> "image" or its quarantine reason, from the tables the assets wrote."""
    data = home / "data"
    outcomes = {}
    for table in (data / "quarantine" / "index" / f"{shard}.parquet", data / "quarantine" / "decode" / f"{shard}.parquet"):
        for row in pq.read_table(table).to_pylist():
            assert row["source_path"] not in outcomes  # never counted twice
            outcomes[row["source_path"]] = row["reason"]
    index = pq.read_table(data / "dicom_index" / f"{shard}.parquet").to_pylist()
    images = set(pq.read_table(data / "cxr_images" / f"{shard}.parquet").column("dicom_id").to_pylist())
    for row in index:
        if row["dicom_id"] in images:
            assert row["source_path"] not in outcomes
            outcomes[row["source_path"]] = "image"
    return outcomes


# pydicom's files: grey and colour, compressed, multi-frame, malformed, truncated, undecodable here.
MIXED_SHARD = {
    "RG1_UNCR.dcm": "image",
    "SC_rgb_rle.dcm": "image",  # RGB, converted with archive.colour grey
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "image",  # JPEG baseline YBR_FULL_422
    "OBXXXX1A.dcm": "image",  # PALETTE COLOR
    "emri_small.dcm": "image",  # multi-frame, frame 0 taken
    "badVR.dcm": "NumberOfFrames: ValueError: invalid literal for int() with base 10: '1A'",
    "MR_truncated.dcm": "truncated Pixel Data",
    "MR_small_jpeg_ls_lossless.dcm": "transfer syntax JPEG-LS Lossless",  # no decoder installed here
}


def test_a_shard_of_mixed_real_files_materialises_with_every_file_an_image_or_a_quarantine_row(home, tmp_path):
    from pydicom.data import get_testdata_file

    from tests.dicom_factory import chest_dx_copy

    files = dict(MIXED_SHARD)
    archive = tmp_path / "archive"
    paths = {}
    for number, name in enumerate(files):
        path = chest_dx_copy(get_testdata_file(name), mimic_path(archive, 10000001 + number, 50000001 + number, f"f{number}"))
        paths[str(path.relative_to(archive))] = name
    (archive / "files" / "p10" / "p10000001" / "s50000001" / "empty.dcm").write_bytes(b"")
    paths["files/p10/p10000001/s50000001/empty.dcm"] = "empty"
    files["empty"] = "empty file (0 bytes)"

    with dg.instance_for_test() as instance:
        result = ingest(home, archive, "p10", instance, colour="grey", max_quarantine_rate=1.0)
        assert result.success
        assert result.asset_materializations_for_node("dicom_index")[0].metadata["colour"].value == "grey"
    outcomes = outcome_of_every_file(home, "p10")
    assert set(outcomes) == set(paths)  # every file accounted for, exactly once
    for source, name in paths.items():
        assert outcomes[source].startswith(files[name]), (name, outcomes[source])


def test_the_id_rule_is_chosen_on_first_ingestion_recorded_and_kept_as_files_arrive(home, tmp_path):
    from tests.dicom_factory import chest_like

    archive = tmp_path / "archive"
    write_dicom(mimic_path(archive, 10000001, 50000001, "1"), chest_like(seed=1))
    write_dicom(mimic_path(archive, 10000002, 50000002, "1"), chest_like(seed=2))  # a PACS export: 1.dcm again
    with dg.instance_for_test() as instance:
        first = ingest(home, archive, "p10", instance)
        assert first.asset_materializations_for_node("dicom_index")[0].metadata["id_rule"].value == "study_stem"
        ids = pq.read_table(home / "data" / "dicom_index" / "p10.parquet").column("dicom_id").to_pylist()
        assert sorted(ids) == ["50000001/1", "50000002/1"]

        # A later study reuses a study folder name under another subject: detection would now pick
        # sop_uid, but ids once given stay; the newcomer is quarantined as the collision it is.
        write_dicom(mimic_path(archive, 10000003, 50000001, "1"), chest_like(seed=3))
        second = ingest(home, archive, "p10", instance)
        assert second.asset_materializations_for_node("dicom_index")[0].metadata["id_rule"].value == "study_stem"
        assert pq.read_table(home / "data" / "dicom_index" / "p10.parquet").column("dicom_id").to_pylist() == ids
        reasons = pq.read_table(home / "data" / "quarantine" / "index" / "p10.parquet").column("reason").to_pylist()
        assert reasons == ["same dicom_id as files/p10/p10000001/s50000001/1.dcm under the id rule 'study_stem': "
                           "this archive repeats file names, so the id rule must be sop_uid "
                           "(see ingestion.dicom_index.detect_id_rule)"]

        # A configured rule that contradicts the recorded one stops the run, naming both.
        third = ingest(home, archive, "p10", instance, raise_on_error=False, id_rule="sop_uid")
        assert not third.success
        failure = next(e for e in third.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message
        assert "archive.id_rule is 'sop_uid' but this archive's images were first ingested under the id rule " \
               "'study_stem'" in message and "set archive.id_rule: study_stem (or auto)" in message


def test_an_id_given_in_one_shard_is_not_given_again_in_another(home, tmp_path):
    from tests.dicom_factory import chest_like

    archive = tmp_path / "archive"
    write_dicom(mimic_path(archive, 10000001, 50000001, "img0001"), chest_like(seed=1))
    write_dicom(mimic_path(archive, 11000001, 51000001, "img0001"), chest_like(seed=2))
    with dg.instance_for_test() as instance:
        register_shards(instance, ["p10", "p11"])
        assert ingest(home, archive, "p10", instance, id_rule="stem").success
        assert ingest(home, archive, "p11", instance, id_rule="stem", max_quarantine_rate=1.0).success
    assert pq.read_table(home / "data" / "dicom_index" / "p11.parquet").num_rows == 0
    [reason] = pq.read_table(home / "data" / "quarantine" / "index" / "p11.parquet").column("reason").to_pylist()
    assert reason.startswith("same dicom_id as files/p10/p10000001/s50000001/img0001.dcm under the id rule 'stem'")
    assert reason.endswith("(another shard)")


def test_the_archive_image_size_limit_reaches_the_index(home, tmp_path):
    from ingestion.shards import ID_LOCK_NAME
    from tests.dicom_factory import chest_like

    archive = tmp_path / "archive"
    write_dicom(mimic_path(archive, 10000001, 50000001, "small"), chest_like(rows=64, cols=64, seed=1))
    write_dicom(mimic_path(archive, 10000002, 50000002, "large"), chest_like(rows=128, cols=112, seed=2))
    with dg.instance_for_test() as instance:
        assert ingest(home, archive, "p10", instance, max_image_pixels=10_000, max_quarantine_rate=1.0).success
    assert outcome_of_every_file(home, "p10") == {
        "files/p10/p10000001/s50000001/small.dcm": "image",
        "files/p10/p10000002/s50000002/large.dcm": "image too large: Rows x Columns 128 x 112 = 14,336 pixels per "
        "frame, over the limit of 10,000 (archive.max_image_pixels); raise archive.max_image_pixels if the image is real"}
    # The shards' id lock lives in the data root, beside the indexes it guards.
    assert (home / "data" / "dicom_index" / ID_LOCK_NAME).is_file()
