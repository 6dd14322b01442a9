"""Structured outputs and the context window, against the stub on 127.0.0.1 with the real
openai client: the schema follows the vocabulary, goes out in each server's dialect, is part of
the version; a server that ignores it is noticed once; requests shrink to fit the context."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from extraction.backends import instruction_version, make_backend
from extraction.config import parse_backend_config
from extraction.extract import extract_reports
from extraction.parse import parse_answer
from extraction.schema import answer_schema, configured_schema
from extraction.to_triplets import to_triplets
from extraction.vocabulary import load_vocabulary
from testkit.openai_stub import StubServer
from tests.test_extraction_openai import API_KEY_ENV, openai_backend, reports_table


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-test")


def test_schema_enums_are_the_vocabularys_names_and_na():
    vocab = load_vocabulary()
    item = answer_schema(vocab, 7).schema["properties"]["findings"]
    assert item["maxItems"] == 7
    fields = item["items"]["properties"]
    assert fields["category"]["enum"] == vocab.category_names
    assert fields["severity"]["enum"] == ["na", *vocab.severity_names]
    assert fields["location"]["enum"] == ["na", *vocab.location_names]
    assert set(item["items"]["required"]) == set(fields) and item["items"]["additionalProperties"] is False


def test_an_explicit_max_tokens_caps_max_items_so_the_longest_answer_closes():
    free = configured_schema("json_schema", 12, None)
    capped = configured_schema("json_schema", 12, free.tokens_to_close() // 2)
    assert capped.max_findings < 12 and capped.tokens_to_close() <= free.tokens_to_close() // 2
    with pytest.raises(ValueError, match="max_tokens 10 cannot hold even one finding"):
        configured_schema("json_schema", 12, 10)


@pytest.mark.parametrize("dialect, expect", [
    ("json_schema", lambda r: r["response_format"]["type"] == "json_schema"
        and r["response_format"]["json_schema"]["strict"] is True and "maxLength" not in json.dumps(r)),
    ("llamacpp_schema", lambda r: r["response_format"]["type"] == "json_object" and "schema" in r["response_format"]),
    ("guided_json", lambda r: "response_format" not in r and r["guided_json"]["required"] == ["findings"]),
])
def test_each_dialect_sends_the_schema_its_way_and_every_answer_parses(tmp_path, dialect, expect):
    texts = [f"Study {i}: ECHO:edema" for i in range(4)]
    with StubServer() as server:
        result = extract_reports(reports_table(texts), openai_backend(server, structured_output=dialect),
                                 tmp_path / "c.duckdb")
    assert all(expect(request) for request in server.requests)
    rows = result.table.to_pylist()
    assert [r["parse_error"] for r in rows] == [None] * 4 and {r["n_findings"] for r in rows} == {1}
    assert result.stats.schema_violations == 0 and result.notices == []


def test_schema_digest_is_in_the_version_and_instruction_version_matches(tmp_path):
    with StubServer() as server:
        base = {"kind": "openai", "base_url": server.base_url, "model": "m", "api_key_env": API_KEY_ENV}
        plain = make_backend({**base, "response_format": "json_object"})
        schema = make_backend({**base, "structured_output": "json_schema"})
        fewer = make_backend({**base, "structured_output": "json_schema", "max_findings": 3})
    assert plain.prompt.directory == schema.prompt.directory  # the same JSON prompt files
    assert len({plain.version, schema.version, fewer.version}) == 3
    for backend, config in ((plain, {**base, "response_format": "json_object"}),
                            (fewer, {**base, "structured_output": "json_schema", "max_findings": 3})):
        assert instruction_version(parse_backend_config(config)) == backend.version


def test_a_server_ignoring_the_schema_is_noticed_once_and_answers_go_through_repair(tmp_path):
    texts = [f"Study {i}: mild cardiomegaly." for i in range(5)]
    heard: list[str] = []
    with StubServer(ignore_format=True, plan=["nonsense"]) as server:
        backend = openai_backend(server, structured_output="json_schema", concurrency=1)
        result = extract_reports(reports_table(texts), backend, tmp_path / "c.duckdb", on_notice=heard.append)
    assert len(heard) == 1 and result.notices == heard and "do not follow the answer schema" in heard[0]
    assert result.stats.schema_violations == 5
    assert result.stats.repairs == 1 and result.stats.errors == 0  # the nonsense answer was repaired
    assert all(r["n_findings"] == 2 for r in result.table.to_pylist())


def test_rows_carry_the_parse_and_triplets_read_it_not_the_answer(tmp_path):
    with StubServer() as server:
        result = extract_reports(reports_table(["ECHO:edema"]), openai_backend(server), tmp_path / "c.duckdb")
    row = result.table.to_pylist()[0]
    assert row["findings"] == [{"severity": "na", "location": "na", "category": "edema", "uncertain": False,
                                "sentence": None}]
    # An answer column that says otherwise is not read again: the parse carried in the row wins.
    table = result.table.set_column(result.table.column_names.index("answer"), "answer",
                                    pa.array(["{na}{na}{pneumothorax}"]))
    triplets, _ = to_triplets(table, load_vocabulary())
    assert triplets.column("category").to_pylist() == ["edema"]
    assert parse_answer(row["answer"]).findings[0].category == "edema"


def test_requests_shrink_to_the_context_window_the_server_reports(tmp_path):
    texts = [f"Study {i}: ECHO:edema " + "word " * 300 for i in range(6)]
    with StubServer(context_tokens=3000) as server:
        backend = openai_backend(server, reports_per_request=6, max_tokens=100, concurrency=1)
        result = extract_reports(reports_table(texts), backend, tmp_path / "c.duckdb")
    assert backend.context_tokens == 3000  # from GET /v1/models
    sizes = [len(re.findall(r"^Report \d+:$", request["messages"][-1]["content"], re.MULTILINE)) or 1
             for request in server.requests]
    # Six such reports and their answers need about 3,300 tokens: never sent together, but
    # several share a request once the server's usage has shown the tokenizer's rate.
    assert sum(sizes) == 6 and max(sizes) < 6 and max(sizes) > 1
    assert sum(1 for r in result.table.to_pylist() if r["error"]) == 0
    assert all(r["n_findings"] == 1 for r in result.table.to_pylist())


def test_a_report_longer_than_the_context_is_its_own_recorded_error_with_the_servers_message(tmp_path):
    texts = ["ECHO:edema short report", "ECHO:edema " + "word " * 5000, "ECHO:edema another one"]
    with StubServer(context_tokens=2000) as server:
        result = extract_reports(reports_table(texts), openai_backend(server, reports_per_request=3, max_tokens=100),
                                 tmp_path / "c.duckdb")
    rows = result.table.to_pylist()
    assert rows[0]["error"] is None and rows[2]["error"] is None
    assert "maximum context length is 2000 tokens" in rows[1]["error"] and "BadRequestError 400" in rows[1]["error"]


def test_strict_schema_batches_of_reports_split_by_position(tmp_path):
    texts = ["ECHO:edema", "ECHO:mass", "ECHO:nodule"]
    with StubServer() as server:
        result = extract_reports(reports_table(texts),
                                 openai_backend(server, structured_output="json_schema", reports_per_request=3),
                                 tmp_path / "c.duckdb")
    (request,) = server.requests
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["reports"]["minItems"] == 3
    assert [json.loads(r["answer"])["findings"][0]["category"] for r in result.table.to_pylist()] == \
        ["edema", "mass", "nodule"]
