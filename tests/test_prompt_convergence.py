"""Prompt automation converges (issue 16): whenever the current prompt version is not the one the
current llm_extractions was made with, the sensor requests one extraction run, also for a version
seen before (served from the cache), and requests nothing once they agree. Real instance, real
rules backend over a copied vocabulary, real materialisations."""

import shutil

import dagster as dg

from assets.extraction import llm_extractions, prompts, triplets
from assets.ingestion import reports
from common.paths import KNOWLEDGE_DIR
from pipeline.resources import ArchiveResource, ExtractorResource, StorageResource
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
        assert observed.metadata["prompt_files"].value == str(vocabulary) + ", " + str(
            __import__("extraction.rules").rules.__file__)
        second_a = extract()
        assert second_a["calls"].value == 0 and second_a["cache_hits"].value == 4  # from the cache
        assert not tick(instance, extractor, back.cursor).run_requests  # converged
