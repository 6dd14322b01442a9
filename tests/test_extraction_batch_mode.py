"""Batch mode over the same cache: OpenAI's Batch API against the stub's files and batches
endpoints (real openai client, 127.0.0.1), resume after a kill, expired / failed / partial
batches, vLLM's offline run-batch file, and the estimate made before any request."""

from __future__ import annotations

import json

import pytest

from extraction.batch import BatchPending, chunk_lines, output_path_of
from extraction.cache import AnswerCache
from extraction.extract import extract_reports
from testkit.openai_stub import StubServer
from tests.test_extraction_openai import API_KEY_ENV, openai_backend, reports_table

TEXTS = [f"Study {i}: ECHO:{c}" for i, c in enumerate(["edema", "mass", "nodule", "hernia", "fracture", "pneumonia"])]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-test")


def batch_backend(server, **overrides):
    return openai_backend(server, mode="batch", batch_poll_s=0.01, **overrides)


def categories(result) -> list[str | None]:
    return [r["findings"][0]["category"] if r["findings"] else None for r in result.table.to_pylist()]


def test_batch_answers_are_committed_to_the_cache_and_an_online_rerun_asks_nothing(tmp_path):
    cache = tmp_path / "c.duckdb"
    heard: list[str] = []
    with StubServer(batch_polls=2) as server:
        result = extract_reports(reports_table(TEXTS), batch_backend(server, batch_price_prompt_per_1k=0.25,
                                                                     price_prompt_per_1k=0.5),
                                 cache, on_info=heard.append)
        assert server.batch_creations == 1 and len(server.files) == 2  # the input and the output file
        lines = [json.loads(line) for line in server.files["file-1"].decode().splitlines()]
        assert [line["url"] for line in lines] == ["/v1/chat/completions"] * 6
        assert {line["custom_id"] for line in lines} == set(result.table.column("cache_key").to_pylist())
        online = extract_reports(reports_table(TEXTS), openai_backend(server), cache)
    assert categories(result) == ["edema", "mass", "nodule", "hernia", "fracture", "pneumonia"]
    assert result.stats.errors == 0 and result.stats.prompt_tokens > 0
    # batch prices, not the online ones
    assert result.stats.cost_usd == pytest.approx(result.stats.prompt_tokens * 0.25 / 1000)
    assert heard[0].startswith("estimate before the batch run: 6 requests")
    assert any("created batch_1" in line for line in heard)
    assert online.stats.calls == 0 and online.stats.cache_hits == 6


def test_a_killed_run_resumes_from_the_recorded_batch_and_asks_nothing_twice(tmp_path):
    cache = tmp_path / "c.duckdb"
    with StubServer(batch_polls=1000) as server:  # the batch never finishes within the first run
        with pytest.raises(BatchPending, match="batch_1 not finished .* re-run extraction later"):
            extract_reports(reports_table(TEXTS), batch_backend(server, batch_wait_s=0.05), cache)
        with AnswerCache(cache) as ledger:
            (recorded,) = ledger.open_batches()
        assert recorded["batch_id"] == "batch_1" and recorded["file_id"] == "file-1"
        server.batch_polls = 0
        resumed = extract_reports(reports_table(TEXTS), batch_backend(server), cache)
        assert server.batch_creations == 1 and len(server.requests) == 6
    assert resumed.stats.errors == 0 and len(categories(resumed)) == 6


def test_a_batch_created_before_its_id_was_recorded_is_found_by_its_input_file(tmp_path):
    cache = tmp_path / "c.duckdb"
    with StubServer(batch_polls=1000) as server:
        with pytest.raises(BatchPending):
            extract_reports(reports_table(TEXTS), batch_backend(server, batch_wait_s=0.05), cache)
        with AnswerCache(cache) as ledger:  # as if killed between create and recording its id
            name = ledger.open_batches()[0]["name"]
            ledger.update_batch(name, batch_id=None, status="uploaded")
        server.batch_polls = 0
        extract_reports(reports_table(TEXTS), batch_backend(server), cache)
    assert server.batch_creations == 1 and len(server.requests) == 6


@pytest.mark.parametrize("outcome, answered", [("expired", 3), ("partial", 5), ("failed", 0)])
def test_unfinished_requests_are_recorded_failures_and_the_next_batch_asks_only_them(tmp_path, outcome, answered):
    cache = tmp_path / "c.duckdb"
    with StubServer() as server:
        server.batch_plan.append(outcome)
        first = extract_reports(reports_table(TEXTS), batch_backend(server), cache)
        errors = [r["error"] for r in first.table.to_pylist() if r["error"]]
        assert len(errors) == 6 - answered and first.stats.errors == 6 - answered
        reason = {"expired": "batch_expired|could not be executed", "partial": "server error on this line",
                  "failed": "the model does not exist"}[outcome]
        assert all(any(word in e for word in reason.split("|")) for e in errors)
        second = extract_reports(reports_table(TEXTS), batch_backend(server), cache)
    assert second.stats.misses == 6 - answered and second.stats.errors == 0
    assert server.batch_creations == 2 and len(server.requests) == 6 and None not in categories(second)


def test_batch_files_are_chunked_to_the_apis_limits():
    lines = [(str(i), "x" * 99) for i in range(10)]
    assert [len(c) for c in chunk_lines(lines, max_requests=4)] == [4, 4, 2]
    assert [len(c) for c in chunk_lines(lines, max_bytes=350)] == [3, 3, 3, 1]


def test_offline_batch_writes_the_file_names_the_command_and_ingests_the_output(tmp_path):
    cache = tmp_path / "cache" / "c.duckdb"
    with StubServer() as server:  # stands in for vLLM's run-batch, answering each line
        backend = openai_backend(server, mode="offline_batch", base_url=None)
        with pytest.raises(BatchPending, match="run `python -m vllm.entrypoints.openai.run_batch -i .* --model stub-llm`"):
            extract_reports(reports_table(TEXTS), backend, cache)
        (input_path,) = (tmp_path / "cache" / "batches").glob("*.jsonl")
        output = []
        for line in input_path.read_text().splitlines():
            request = json.loads(line)
            status, body = server.chat(request["body"], "ok")
            output.append(json.dumps({"id": "x", "custom_id": request["custom_id"], "error": None,
                                      "response": {"status_code": status, "request_id": "x", "body": body}}))
        output_path_of(input_path).write_text("\n".join(output) + "\n")
        result = extract_reports(reports_table(TEXTS), backend, cache)
    assert categories(result) == ["edema", "mass", "nodule", "hernia", "fracture", "pneumonia"]
    assert result.stats.errors == 0 and result.stats.calls == 6


def test_batch_modes_refuse_several_reports_per_request_in_one_line():
    from extraction.config import ExtractorSettingError, parse_backend_config

    with pytest.raises(ExtractorSettingError, match="reports_per_request 8 applies to mode online only"):
        parse_backend_config({"kind": "openai", "model": "m", "mode": "offline_batch", "reports_per_request": 8})
