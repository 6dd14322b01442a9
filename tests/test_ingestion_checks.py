"""The ingestion checks explain themselves (issue 22): a failed check names what failed and
where, the identifier check finds planted leaks of each kind without printing a value, and the
quarantine rate has a count floor so a tiny shard with one bad file warns instead of failing."""

import dagster as dg
import pytest

from assets.ingestion import cxr_images, dicom_index
from assets.partitions import register_shards
from assets.resources import ArchiveResource, StorageResource
from tests.dicom_factory import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, chest_like, mimic_path, write_dicom


def ingest(home, archive, instance, index_config=None, **archive_fields):
    register_shards(instance, ["p10"])
    return dg.materialize(
        [dicom_index, cxr_images], partition_key="p10", instance=instance, raise_on_error=False,
        resources={"storage": StorageResource(home=str(home)),
                   "archive": ArchiveResource(root=str(archive), **archive_fields)},
        run_config={"ops": {"cxr_images": {"config": {"image_size": 32, "workers": 1}},
                            "dicom_index": {"config": index_config or {}}}},
    )


def check(result, name: str) -> dg.AssetCheckEvaluation:
    return next(c for c in result.get_asset_check_evaluations() if c.check_name == name)


# A file named after the patient: its name becomes the image's dicom_id, an output column.
@pytest.mark.parametrize("stem, kind", [
    (PATIENT_NAME.replace("^", "_"), "name"),  # QUIXOTE_ALONSO
    (PATIENT_ID, "id"),
    (BIRTH_DATE, "birth_date"),  # 19470923, whole cell: a date
])
def test_a_planted_identifier_of_each_kind_fails_the_leak_check_with_where_and_never_the_value(home, tmp_path, stem, kind):
    archive = tmp_path / "archive"
    write_dicom(mimic_path(archive, 10000001, 50000001, stem), chest_like(seed=1))
    with dg.instance_for_test() as instance:
        result = ingest(home, archive, instance, id_rule="stem")
    leak = check(result, "no_identifier_leaks")
    assert not result.success and not leak.passed  # blocking: nothing is decoded
    assert leak.description.startswith(f"shard p10: patient identifiers found: {kind} in "
                                       "data/dicom_index/p10.parquet column dicom_id (row 0)"), leak.description
    for part in (*PATIENT_NAME.split("^"), PATIENT_ID, BIRTH_DATE):
        assert part not in leak.description and part not in str(leak.metadata["leaks"].value)
    assert not (home / "data" / "cxr_images" / "p10.parquet").exists()


def test_a_birth_date_inside_an_id_is_no_leak(home, tmp_path):
    """A MIMIC-style dicom_id whose digit group equals the birth date (the 20k scale run)."""
    archive = tmp_path / "archive"
    write_dicom(mimic_path(archive, 10000001, 50000001, f"b58f18e7-23e4dc06-9846239b-{BIRTH_DATE}-c0fbbefa"),
                chest_like(seed=1))
    with dg.instance_for_test() as instance:
        result = ingest(home, archive, instance)
    assert result.success and check(result, "no_identifier_leaks").passed


def small_shard(archive, good: int, bad: int) -> None:
    for n in range(good):
        write_dicom(mimic_path(archive, 10000001, 50000001, f"good{n}"), chest_like(seed=n))
    for n in range(bad):
        path = mimic_path(archive, 10000002, 50000002, f"bad{n}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_a_two_file_shard_with_one_bad_file_materialises_with_a_warning(home, tmp_path):
    archive = tmp_path / "archive"
    small_shard(archive, good=1, bad=1)
    with dg.instance_for_test() as instance:
        result = ingest(home, archive, instance)
    rate = check(result, "quarantine_rate")
    assert result.success and not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.description.startswith("shard p10: 1 of 2 files quarantined (50% > max_quarantine_rate 0.05); "
                                       "first reasons: empty file (0 bytes); all in data/quarantine/index/p10.parquet; "
                                       "a warning only: fewer than 20 files")
    assert result.asset_materializations_for_node("cxr_images")[0].metadata["dagster/row_count"].value == 1


def test_a_small_shard_with_no_usable_file_fails(home, tmp_path):
    archive = tmp_path / "archive"
    small_shard(archive, good=0, bad=2)
    with dg.instance_for_test() as instance:
        result = ingest(home, archive, instance)
    rate = check(result, "quarantine_rate")
    assert not result.success and rate.severity == dg.AssetCheckSeverity.ERROR
    assert rate.description.startswith("shard p10: 2 of 2 files quarantined (100% > max_quarantine_rate 0.05)")


def test_the_limit_and_the_floor_are_settings_and_run_config_wins(home, tmp_path):
    archive = tmp_path / "archive"
    small_shard(archive, good=3, bad=1)  # 25% quarantined
    with dg.instance_for_test() as instance:
        floor_lowered = ingest(home, archive, instance, quarantine_rate_min_files=4)
        assert not floor_lowered.success and check(floor_lowered, "quarantine_rate").severity == dg.AssetCheckSeverity.ERROR
        assert ingest(home, archive, instance, quarantine_rate_min_files=4, max_quarantine_rate=0.3).success
        overridden = ingest(home, archive, instance, {"max_quarantine_rate": 0.2}, max_quarantine_rate=0.3,
                            quarantine_rate_min_files=4)
        assert not overridden.success
        assert "(25% > max_quarantine_rate 0.2)" in check(overridden, "quarantine_rate").description


def test_a_category_without_description_is_named_by_the_failed_check(home):
    """Outside ingestion too, a failed check says what failed and where."""
    import pyarrow as pa

    from assets.checks import every_triplet_category_described
    from assets.knowledge import knowledge_base
    from common.storage import write_table

    write_table(pa.table({"category": ["effusion", "flibbertigibbet"]}), home / "data" / "triplets" / "triplets.parquet")
    with dg.instance_for_test() as instance:
        result = dg.materialize([knowledge_base, every_triplet_category_described], instance=instance,
                                resources={"storage": StorageResource(home=str(home))})
    described = check(result, "every_triplet_category_described")
    assert not described.passed
    assert described.description == ("1 categories used by triplets have no visual description in the knowledge "
                                      "base: flibbertigibbet; add them to knowledge/descriptions.yaml")
