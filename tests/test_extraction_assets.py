"""Extraction assets in a real Dagster instance: cache hits on re-run, a prompt edit re-asks
every report and marks downstream stale, and the sensor requests the re-run."""

import shutil

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from assets.extraction import llm_extractions, prompts, report_labels, triplets
from assets.ingestion import reports
from assets.partitions import register_shards
from common.storage import file_sha256
from assets.resources import ArchiveResource, ExtractorResource, StorageResource
from pipeline.sensors import prompt_change_sensor
from common.paths import PROMPTS_DIR
from tests.archive_factory import build_archive
from testkit.openai_stub import StubServer

ALL = [prompts, reports, llm_extractions, triplets]
CHEXPERT = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
            "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
            "Pleural Other", "Fracture", "Support Devices"]


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    build_archive(root)
    return root


def resources(home, archive, extractor=None):
    return {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive)),
            "extractor": extractor or ExtractorResource()}


def ingest_reports(instance, res):
    register_shards(instance, ["p10", "p11"])
    for shard in ("p10", "p11"):
        assert dg.materialize([reports], partition_key=shard, instance=instance, resources=res).success


def extract(instance, res):
    result = dg.materialize(ALL, instance=instance, resources=res, selection=["prompts", "llm_extractions", "triplets"])
    assert result.success
    return result.asset_materializations_for_node("llm_extractions")[0].metadata


def test_rules_extraction_rerun_makes_zero_backend_calls(home, archive):
    res = resources(home, archive)
    with dg.instance_for_test() as instance:
        ingest_reports(instance, res)
        first = extract(instance, res)
        assert first["dagster/row_count"].value == 5  # every report kept, the empty one too
        assert first["calls"].value == 4 and first["empty_reports"].value == 1
        second = extract(instance, res)
        assert second["calls"].value == 0 and second["cache_hits"].value == 4
        rows = pq.read_table(home / "data" / "triplets" / "triplets.parquet").to_pylist()
        effusion = [r for r in rows if r["study_id"] == "50000001" and r["category"] == "effusion"]
        assert effusion and effusion[0]["severity"] == "small" and effusion[0]["location"] == "right"
        assert any(r["category"] == "pneumothorax" and r["negated"] for r in rows)


def test_prompt_edit_reasks_every_report_marks_downstream_stale_and_triggers_the_sensor(home, archive, tmp_path, monkeypatch):
    prompt_dir = tmp_path / "prompt"
    shutil.copytree(PROMPTS_DIR / "gpt_ie", prompt_dir)
    monkeypatch.setenv("STUB_KEY", "sk-test")
    with StubServer() as server, dg.instance_for_test() as instance:
        extractor = ExtractorResource(backend="openai", base_url=server.base_url, model="stub-llm",
                                      api_key_env="STUB_KEY", prompt_dir=str(prompt_dir), concurrency=2)
        res = resources(home, archive, extractor)
        ingest_reports(instance, res)
        first = extract(instance, res)
        assert first["calls"].value == 4 and len(server.answered) == 4
        assert first["total_tokens"].value > 0 and first["model"].value == "stub-llm"

        # The sensor sees nothing new right after the extraction it would have launched.
        tick = prompt_change_sensor(dg.build_sensor_context(instance=instance, resources={"extractor": extractor}))
        assert not tick.run_requests
        cursor = tick.cursor

        (prompt_dir / "system.md").write_text((prompt_dir / "system.md").read_text() + "\nBe terse.\n")
        tick = prompt_change_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                            resources={"extractor": extractor}))
        assert len(tick.run_requests) == 1 and tick.cursor != cursor
        for event in tick.asset_events:  # what the daemon does with the sensor's observation
            instance.report_runless_asset_event(event)
        resolver = get_stale_status_resolver(instance, ALL)
        assert resolver.get_status(dg.AssetKey("llm_extractions")) == StaleStatus.STALE

        # Dagster's staleness is one hop: triplets turn unsynced once extraction re-runs.
        result = dg.materialize(ALL, instance=instance, resources=res, selection=["prompts", "llm_extractions"])
        second = result.asset_materializations_for_node("llm_extractions")[0].metadata
        assert second["calls"].value == 4 and len(server.answered) == 8  # every report re-asked
        resolver = get_stale_status_resolver(instance, ALL)
        assert resolver.get_status(dg.AssetKey("llm_extractions")) == StaleStatus.FRESH
        assert resolver.get_status(dg.AssetKey("triplets")) == StaleStatus.STALE
        assert extract(instance, res)["calls"].value == 0  # and then cached


def test_report_labels_has_one_chexpert_row_per_read_report(home, archive):
    res = resources(home, archive)
    with dg.instance_for_test() as instance:
        ingest_reports(instance, res)
        result = dg.materialize(ALL + [report_labels], instance=instance, resources=res,
                                selection=["prompts", "llm_extractions", "triplets", "report_labels"])
        assert result.success
        metadata = result.asset_materializations_for_node("report_labels")[0].metadata
    path = home / "data" / "report_labels" / "report_labels.parquet"
    table = pq.read_table(path)
    assert table.column_names == ["study_id", *CHEXPERT]
    assert metadata["dagster/row_count"].value == table.num_rows == 4  # the empty report has no row
    assert metadata["sha256"].value == file_sha256(path)
    assert "Pleural Effusion" in metadata["label_counts"].value
    assert metadata["convention"].value.startswith("chexpert:")
    # the chestxray14 convention, in its own file, with its counts and convention in the metadata
    cxr14 = pq.read_table(home / "data" / "report_labels" / "report_labels_chestxray14.parquet")
    assert cxr14.column_names[:3] == ["study_id", "Atelectasis", "Cardiomegaly"] and cxr14.num_rows == 4
    assert metadata["chestxray14_convention"].value.startswith("chestxray14:")
    assert "Pleural_Thickening" in metadata["chestxray14_label_counts"].value
    assert {r["study_id"]: r["Effusion"] for r in cxr14.to_pylist()}["50000001"] == 1
    rows = {r["study_id"]: r for r in table.to_pylist()}
    assert rows["50000001"]["Pleural Effusion"] == 1 and rows["50000001"]["Pneumothorax"] == 0
    assert rows["50000001"]["No Finding"] is None
    assert rows["50000004"]["Cardiomegaly"] == 0 and rows["50000004"]["No Finding"] == 1


def test_editing_the_label_map_changes_report_labels_code_version():
    """Dagster marks an asset stale when its code version changes; the label map is its code."""
    from common.storage import file_sha256
    from extraction.labels import default_label_maps_path
    from pipeline.definitions import defs

    node = defs.resolve_asset_graph().get(dg.AssetKey("report_labels"))
    assert node.code_version == "1-" + file_sha256(default_label_maps_path())[:12]
