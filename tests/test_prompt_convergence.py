"""Prompt automation converges (issue 16): whenever the current prompt version is not the one the
current llm_extractions was made with, the sensor requests one extraction run, also for a version
seen before (served from the cache), and requests nothing once they agree. Real instance, real
rules backend over a copied vocabulary, real materialisations."""

import shutil

import dagster as dg

from assets.extraction import llm_extractions, prompts, report_labels, triplets
from assets.ingestion import reports
from common.paths import KNOWLEDGE_DIR
from assets.resources import ArchiveResource, ExtractorResource, StorageResource
from pipeline.sensors import prompt_change_sensor
from tests.archive_factory import build_archive

ALL = [prompts, reports, llm_extractions, triplets]


def tick(instance, extractor, cursor=None):
    return prompt_change_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                        resources={"extractor": extractor}))


def test_returning_to_an_earlier_prompt_version_re_extracts_it_from_the_cache(home, tmp_path):
    archive, vocabulary = tmp_path / "archive", tmp_path / "vocabulary.yaml"
    build_archive(archive)
    shutil.copy(KNOWLEDGE_DIR / "vocabulary.yaml", vocabulary)
    original = vocabulary.read_text()
    extractor = ExtractorResource(backend="rules", vocabulary_path=str(vocabulary))
    res = {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive)),
           "extractor": extractor}

    def extract() -> dict:
        result = dg.materialize(ALL, instance=instance, resources=res, selection=["prompts", "llm_extractions"])
        assert result.success
        return result.asset_materializations_for_node("llm_extractions")[0].metadata

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("archive_shards", ["p10", "p11"])  # as `medfilip run` registers them
        for shard in ("p10", "p11"):
            assert dg.materialize([reports], partition_key=shard, instance=instance, resources=res).success
        assert extract()["calls"].value == 4                       # version A
        first = tick(instance, extractor)
        assert not first.run_requests                              # A is current: nothing to do

        vocabulary.write_text(original + "\n# edited\n")           # version B
        to_b = tick(instance, extractor, first.cursor)
        assert len(to_b.run_requests) == 1
        again = tick(instance, extractor, to_b.cursor)             # B's run not finished yet:
        assert [r.run_key for r in again.run_requests] == [to_b.run_requests[0].run_key]  # same key, deduped
        assert extract()["calls"].value == 4                       # B re-asks every report
        assert not tick(instance, extractor, to_b.cursor).run_requests

        vocabulary.write_text(original)                            # back to A, seen before
        back = tick(instance, extractor, to_b.cursor)
        assert len(back.run_requests) == 1
        assert back.run_requests[0].run_key not in (to_b.run_requests[0].run_key,)
        assert back.run_requests[0].tags["medfilip/prompt_version"] == first.cursor
        observed = back.asset_events[0]
        assert observed.metadata["prompt_files"].value == ", ".join(sorted(
            [str(vocabulary), __import__("extraction.rules").rules.__file__]))
        second_a = extract()
        assert second_a["calls"].value == 0 and second_a["cache_hits"].value == 4  # from the cache
        assert not tick(instance, extractor, back.cursor).run_requests  # converged


def test_a_re_extraction_re_materialises_every_derived_asset_down_to_the_ssm(home, tmp_path):
    """Dagster's staleness is one hop, so the derived assets carry eager automation conditions:
    one evaluation after a prompt change requests the whole chain to the SSM, and nothing beyond
    (the model is never retrained unasked)."""
    from assets.ingestion import cxr_images, dicom_files, dicom_index, report_files
    from assets.knowledge import knowledge_base, ssm, text_embeddings, training_texts

    archive, vocabulary = tmp_path / "archive", tmp_path / "vocabulary.yaml"
    build_archive(archive)
    shutil.copy(KNOWLEDGE_DIR / "vocabulary.yaml", vocabulary)
    extractor = ExtractorResource(backend="rules", vocabulary_path=str(vocabulary))
    res = {"storage": StorageResource(home=str(home)), "archive": ArchiveResource(root=str(archive)),
           "extractor": extractor}
    graph = [dicom_files, report_files, dicom_index, cxr_images, reports, prompts, llm_extractions, triplets,
             report_labels, knowledge_base, training_texts, text_embeddings, ssm]
    chain = {"triplets", "report_labels", "training_texts", "text_embeddings", "ssm"}
    defs = dg.Definitions(assets=graph, resources=res)

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("archive_shards", ["p10", "p11"])  # as `medfilip run` registers them
        for shard in ("p10", "p11"):
            # The archive's broken files are the point of other tests; here they may be quarantined.
            lenient = {"ops": {"dicom_index": {"config": {"max_quarantine_rate": 1.0}}}}
            assert dg.materialize(graph, partition_key=shard, instance=instance, resources=res, run_config=lenient,
                                  selection=["dicom_index", "cxr_images", "reports"]).success
        assert dg.materialize(graph, instance=instance, resources=res,
                              selection=["prompts", "llm_extractions", "knowledge_base", *chain]).success
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert settled.total_requested == 0  # everything current: nothing to do

        vocabulary.write_text(vocabulary.read_text() + "\n# edited\n")
        assert dg.materialize(graph, instance=instance, resources=res,
                              selection=["prompts", "llm_extractions"]).success
        # What the daemon does tick after tick: evaluate, run what was requested, until settled.
        waves, cursor = [], settled.cursor
        for _ in range(len(chain) + 2):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = result.cursor
            requested = sorted(name for name in chain | {"knowledge_base", "llm_extractions"}
                               if result.get_num_requested(dg.AssetKey(name)))
            if not requested:
                break
            waves.append(requested)
            assert dg.materialize(graph, instance=instance, resources=res, selection=requested).success
        assert sorted(name for wave in waves for name in wave) == sorted(chain), waves
        assert "triplets" in waves[0], waves  # one run for the whole chain, as the daemon launches it
        assert not requested  # converged: nothing more to do, and nothing beyond the SSM
