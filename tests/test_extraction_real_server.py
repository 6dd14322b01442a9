"""A real server with a real model: llama.cpp's server over SmolLM2-135M-Instruct (the `test`
extra), started on 127.0.0.1 by these tests, reading 20 IU reports through the real openai
client. It counts tokens with a real tokenizer, applies a chat template, enforces the answer
schema as grammar, refuses requests longer than its context, and a 135M model answers badly in
ways nobody scripted. Under CI a missing server fails; elsewhere it skips with the install line.

Quality is not asserted: what a 135M model says about a report is mostly wrong; what is
asserted is that the pipeline handles what it says.
"""

from __future__ import annotations

import json
import os
import urllib.request

import dagster as dg
import pytest

from assets.extraction import llm_extractions, prompts, triplets
from assets.ingestion import reports
from assets.partitions import register_shards
from assets.resources import ArchiveResource, ExtractorResource, StorageResource
from extraction.backends import make_backend
from extraction.extract import UNREADABLE_ANSWER_ERROR, extract_reports, failure_summary
from testkit import llama_server as server_kit
from testkit.iu_gold import load_iu_texts
from tests.dicom_factory import write_report
from tests.test_extraction_openai import reports_table

pytestmark = pytest.mark.slow
KEY_ENV = "MEDFILIP_TEST_LLAMA_KEY"
N_REPORTS = 20
N_CTX = 4096

if not server_kit.available():
    if os.environ.get("CI"):
        raise RuntimeError(server_kit.MISSING)  # CI must run these tests, never skip them
    pytest.skip(server_kit.MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with server_kit.llama_server(tmp_path_factory.mktemp("llama") / "server.log", n_ctx=N_CTX) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def iu_texts() -> list[str]:
    texts = load_iu_texts()
    return [texts[key] for key in sorted(texts)[:N_REPORTS]]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-local")  # llama.cpp's server takes any key


def settings(base_url: str, **overrides) -> dict:
    return {"backend": "openai", "base_url": base_url, "model": server_kit.MODEL_ALIAS, "api_key_env": KEY_ENV,
            "concurrency": 1, "timeout_s": 120, "max_attempts": 2, **overrides}


def tokens_of(base_url: str, text: str) -> int:
    """The server's own token count of `text` (llama-cpp-python's /extras/tokenize/count)."""
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/extras/tokenize/count",
                                     data=json.dumps({"input": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["count"]


def test_extraction_job_with_the_schema_end_to_end_and_a_rerun_asks_nothing(server, iu_texts, tmp_path):
    archive = tmp_path / "archive"
    for i, text in enumerate(iu_texts):
        write_report(archive, 10000000 + i, 50000000 + i, f"FINDINGS: {text}\n")
    extractor = ExtractorResource(**settings(server, structured_output="llamacpp_schema", max_findings=4))
    resources = {"storage": StorageResource(home=str(tmp_path / "home")), "archive": ArchiveResource(root=str(archive)),
                 "extractor": extractor}
    instance = dg.DagsterInstance.ephemeral()
    register_shards(instance, ["p10"])
    assert dg.materialize([reports], partition_key="p10", instance=instance, resources=resources).success

    def run() -> dict:
        result = dg.materialize([prompts, reports, llm_extractions, triplets], instance=instance, resources=resources,
                                selection=["prompts", "llm_extractions"])
        assert result.success
        return result.asset_materializations_for_node("llm_extractions")[0].metadata

    first = run()
    assert first["calls"].value == N_REPORTS and first["errors"].value == 0
    assert first["parse_errors"].value == 0  # the grammar makes every answer parse
    assert first["schema_followed"].value is True and first["schema_violations"].value == 0
    assert first["estimate_requests"].value == N_REPORTS
    # Usage as the server's tokenizer counts it: each prompt holds the whole system prompt and the
    # report, plus the chat template's few tokens.
    system = make_backend(extractor.backend_config()).prompt.system
    table = __import__("pyarrow.parquet", fromlist=["x"]).read_table(first["path"].value).to_pylist()
    for row, text in zip(sorted(table, key=lambda r: r["study_id"]), iu_texts):
        assert row["prompt_tokens"] >= tokens_of(server, system)
    assert first["prompt_tokens"].value == sum(r["prompt_tokens"] for r in table)
    assert first["completion_tokens"].value == sum(r["completion_tokens"] for r in table) > 0

    second = run()
    assert second["calls"].value == 0 and second["cache_hits"].value == N_REPORTS


def test_text_answers_get_their_repair_request_and_too_many_failures_fail_loudly(server, iu_texts, tmp_path):
    backend = make_backend({"kind": "openai", **{k: v for k, v in settings(server, max_tokens=160).items()
                                                 if k != "backend"}})
    result = extract_reports(reports_table(iu_texts), backend, tmp_path / "c.duckdb")
    rows, stats = result.table.to_pylist(), result.stats
    unreadable = [r for r in rows if r["error"] and r["error"].startswith(UNREADABLE_ANSWER_ERROR)]
    assert stats.repairs > 0 and len(unreadable) <= stats.repairs  # each one had its repair request
    assert all(r["attempts"] >= 2 and r["answer"] is not None for r in unreadable)  # recorded with the answer
    assert stats.errors == len(unreadable)  # no other kind of failure against a live server
    rate = len(unreadable) / len(rows)
    verdict = failure_summary(result.table, max_error_rate=0.2)
    assert (verdict is not None) == (rate > 0.2)
    if verdict is not None:
        assert "max_error_rate 0.2" in verdict and "\n" not in verdict


def test_a_report_longer_than_the_context_is_its_own_error_with_the_servers_message(server, iu_texts, tmp_path):
    long_report = " ".join(iu_texts) * 4  # well over 4,096 tokens
    texts = [iu_texts[0], long_report, iu_texts[1]]
    backend = make_backend({"kind": "openai", **{k: v for k, v in settings(
        server, structured_output="llamacpp_schema", max_findings=2, reports_per_request=3).items() if k != "backend"}})
    result = extract_reports(reports_table(texts), backend, tmp_path / "c.duckdb")
    rows = result.table.to_pylist()
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert "BadRequestError 400" in rows[1]["error"] and "context" in rows[1]["error"]
    assert backend.context_tokens == N_CTX  # learnt from the server's refusal
