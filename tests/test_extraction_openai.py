"""The openai backend, with the real `openai` client, against a stub server on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from extraction.backends import make_backend
from extraction.extract import extract_reports
from testkit.openai_stub import COMPLETION_TOKENS, StubServer

API_KEY_ENV = "MEDFILIP_TEST_LLM_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-test")


def openai_backend(server: StubServer, **overrides):
    config = {"kind": "openai", "base_url": server.base_url, "model": "stub-llm",
              "api_key_env": API_KEY_ENV, "timeout_s": 5, "max_attempts": 4,
              "backoff_base_s": 0.01, "backoff_max_s": 0.05, "concurrency": 4}
    return make_backend({**config, **overrides})


def reports_table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"s{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


def test_answers_are_parsed_and_usage_and_cost_are_summed(tmp_path):
    texts = [f"Report {i}: mild cardiomegaly, no effusion." for i in range(6)]
    with StubServer() as server:
        backend = openai_backend(server, price_prompt_per_1k=0.5, price_completion_per_1k=2.0)
        result = extract_reports(reports_table(texts), backend, tmp_path / "cache.duckdb")
    stats, rows = result.stats, result.table.to_pylist()
    assert stats.calls == 6 and stats.attempts == 6 and stats.errors == 0
    assert stats.prompt_tokens == server.prompt_tokens_sent > 0
    assert stats.completion_tokens == 6 * COMPLETION_TOKENS
    assert stats.cost_usd == pytest.approx((stats.prompt_tokens * 0.5 + stats.completion_tokens * 2.0) / 1000)
    assert sum(r["prompt_tokens"] for r in rows) == stats.prompt_tokens
    assert all(r["n_findings"] == 2 and r["parse_error"] is None and r["model"] == "stub-llm-served"
               for r in rows)


def test_only_the_prompt_and_report_text_go_to_the_endpoint(tmp_path):
    table = reports_table(["Small left apical pneumothorax."])
    with StubServer() as server:
        extract_reports(table, openai_backend(server, response_format="json_object"),
                        tmp_path / "c.duckdb")
    (request,) = server.requests
    assert set(request) <= {"model", "messages", "temperature", "max_tokens", "response_format"}
    assert request["temperature"] == 0 and request["response_format"] == {"type": "json_object"}
    user = request["messages"][-1]["content"]
    assert "Small left apical pneumothorax." in user and "s0" not in user


def test_429_and_500_are_retried_and_attempts_counted(tmp_path):
    with StubServer() as server:
        server.plan.extend(["429", "500", "ok"])
        backend = openai_backend(server, concurrency=1)
        result = extract_reports(reports_table(["Mild pulmonary edema."]), backend, tmp_path / "c.duckdb")
    (row,) = result.table.to_pylist()
    assert row["error"] is None and row["attempts"] == 3 and len(server.requests) == 3
    assert result.stats.calls == 1 and result.stats.attempts == 3


def test_error_after_retries_is_recorded_not_cached_and_retried_next_run(tmp_path):
    cache = tmp_path / "c.duckdb"
    table = reports_table(["Mild pulmonary edema."])
    with StubServer(default="500") as server:
        first = extract_reports(table, openai_backend(server, max_attempts=3), cache)
        assert len(server.requests) == 3
        (row,) = first.table.to_pylist()
        assert row["answer"] is None and row["attempts"] == 3 and "gave up after 3 attempts" in row["error"]
        assert first.stats.errors == 1
        server.default = "ok"
        second = extract_reports(table, openai_backend(server, max_attempts=3), cache)
    assert second.stats.calls == 1 and second.table.column("error").to_pylist() == [None]


def test_hanging_server_times_out_per_call(tmp_path):
    with StubServer(default="hang") as server:
        backend = openai_backend(server, timeout_s=0.3, max_attempts=2)
        result = extract_reports(reports_table(["Mild cardiomegaly."]), backend, tmp_path / "c.duckdb")
    (row,) = result.table.to_pylist()
    # Two attempts, each ended by the client's timeout (the stub never answers).
    assert "APITimeoutError" in row["error"] and row["attempts"] == 2 and len(server.requests) == 2


def test_garbage_response_fails_without_retry(tmp_path):
    with StubServer(default="garbage") as server:
        result = extract_reports(reports_table(["Mild cardiomegaly."]), openai_backend(server),
                                 tmp_path / "c.duckdb")
    (row,) = result.table.to_pylist()
    assert row["error"] is not None and row["attempts"] == 1 and len(server.requests) == 1


def test_concurrency_is_bounded_and_overlaps_slow_calls(tmp_path):
    texts = [f"Report {i}." for i in range(12)]
    with StubServer(default="slow", delay_s=0.2) as server:
        extract_reports(reports_table(texts), openai_backend(server, concurrency=4), tmp_path / "c.duckdb")
    # Four requests were open at the server at one moment: the calls overlap, and never more.
    assert server.max_in_flight == 4 and len(server.requests) == 12


def test_empty_report_makes_no_call(tmp_path):
    with StubServer() as server:
        result = extract_reports(reports_table(["", "   "]), openai_backend(server), tmp_path / "c.duckdb")
    assert server.requests == [] and result.stats.calls == 0 and result.stats.empty_reports == 2
    assert result.table.column("error").to_pylist() == ["empty report", "empty report"]


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV)
    with StubServer() as server, pytest.raises(ValueError, match=API_KEY_ENV):
        openai_backend(server)
