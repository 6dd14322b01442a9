"""Several reports per LLM request: numbered reports, answers matched back by number, a missing
or doubtful part re-asked alone (never another report's findings), per-report cache keys."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from extraction.backends import make_backend
from extraction.extract import extract_reports
from extraction.prompts import split_batch_answer
from extraction.parse import parse_answer
from testkit.openai_stub import StubServer

KEY_ENV = "MEDFILIP_TEST_LLM_KEY"
CATEGORIES = ["effusion", "pneumothorax", "atelectasis", "edema", "nodule", "mass", "fracture", "hernia",
              "emphysema", "fibrosis"]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")


def backend(server: StubServer, **overrides):
    config = {"kind": "openai", "base_url": server.base_url, "model": "stub-llm", "api_key_env": KEY_ENV,
              "timeout_s": 5, "max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "concurrency": 2}
    return make_backend({**config, **overrides})


def table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"s{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


def echo_reports(n: int) -> list[str]:
    return [f"Report text {i}. Findings: ECHO:{CATEGORIES[i % len(CATEGORIES)]} seen." for i in range(n)]


def categories(result) -> list[list[str]]:
    return [[f.category for f in parse_answer(a).findings] for a in result.table.column("answer").to_pylist()]


def test_split_batch_answer_matches_parts_by_number_and_refuses_doubtful_ones():
    answer = "**Report 2:**\n{na}{na}{edema}{certain}\n\nReport 1:\n{no}{na}{effusion}{certain}\nReport 3: none"
    assert split_batch_answer(answer, 3) == ["{no}{na}{effusion}{certain}", "{na}{na}{edema}{certain}", "none"]
    assert split_batch_answer("Report 1:\n{a}{b}{c}", 2) == ["{a}{b}{c}", None]  # missing part
    twice = "Report 1:\n{na}{na}{edema}\nReport 1:\n{na}{na}{mass}\nReport 2:\n{na}{na}{nodule}"
    assert split_batch_answer(twice, 2) == [None, "{na}{na}{nodule}"]  # which "1" is right? neither
    assert split_batch_answer("{na}{na}{edema}", 2) == [None, None]  # no headers at all


def test_each_report_gets_its_own_findings_and_the_cache_stays_per_report(tmp_path):
    texts = echo_reports(10)
    cache = tmp_path / "c.duckdb"
    with StubServer() as server:
        first = extract_reports(table(texts), backend(server, reports_per_request=4), cache)
        assert len(server.requests) == 3  # 4 + 4 + 2
        assert categories(first) == [[CATEGORIES[i]] for i in range(10)]
        assert first.table.column("error").null_count == 10
        again = extract_reports(table(texts[:3] + ["A new report. ECHO:hernia here."]),
                                backend(server, reports_per_request=4), cache)
        assert again.stats.cache_hits == 3 and again.stats.calls == 1 and len(server.requests) == 4
        assert categories(again)[3] == ["hernia"]


@pytest.mark.parametrize("mode, alone", [("batch_missing", [3]), ("batch_duplicate", [0, 1])])
def test_a_missing_or_doubtful_part_is_asked_again_alone(tmp_path, mode, alone):
    texts = echo_reports(4)
    with StubServer(plan=[mode]) as server:
        result = extract_reports(table(texts), backend(server, reports_per_request=4, concurrency=1),
                                 tmp_path / "c.duckdb")
        singles = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert len(server.requests) == 1 + len(alone)
    assert all("Report 1:" not in content for content in singles)  # asked one by one
    assert sorted(next(i for i, t in enumerate(texts) if t in content) for content in singles) == alone
    assert categories(result) == [[CATEGORIES[i]] for i in range(4)]


def test_batching_at_least_halves_the_tokens_per_report_at_equal_answers(tmp_path):
    from testkit.iu_gold import load_iu_texts

    texts = list(load_iu_texts().values())[:48]
    with StubServer() as server:
        one = extract_reports(table(texts), backend(server), tmp_path / "one.duckdb")
        eight = extract_reports(table(texts), backend(server, reports_per_request=8), tmp_path / "eight.duckdb")
    assert categories(one) == categories(eight)
    per_report = [(r.stats.prompt_tokens + r.stats.completion_tokens) / len(texts) for r in (one, eight)]
    # Counts from the stub's usage (words), not time: the instruction (~750 words) is sent once
    # per 8 reports instead of once per report, against ~40 words of report text each.
    assert per_report[1] <= 0.5 * per_report[0]
