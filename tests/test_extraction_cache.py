"""Answer cache: re-runs ask nothing, edits ask exactly what changed, a killed run resumes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from extraction.backends import make_backend
from extraction.extract import extract_reports
from extraction.prompts import default_prompt_dir
from testkit.openai_stub import StubServer

API_KEY_ENV = "MEDFILIP_TEST_LLM_KEY"
REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Study {i}: small left pleural effusion, no pneumothorax." for i in range(8)]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-test")


def reports_table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"s{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


def openai_backend(server: StubServer, **overrides):
    config = {"kind": "openai", "base_url": server.base_url, "model": "stub-llm",
              "api_key_env": API_KEY_ENV, "timeout_s": 5, "backoff_base_s": 0.01,
              "concurrency": 3}
    return make_backend({**config, **overrides})


def test_rerun_without_changes_makes_zero_calls(tmp_path):
    cache = tmp_path / "c.duckdb"
    with StubServer() as server:
        first = extract_reports(reports_table(TEXTS), openai_backend(server), cache)
        second = extract_reports(reports_table(TEXTS), openai_backend(server), cache)
    assert len(server.requests) == len(TEXTS)
    assert second.stats.calls == 0 and second.stats.cache_hits == len(TEXTS)
    assert all(second.table.column("cached").to_pylist())
    assert second.table.column("answer").to_pylist() == first.table.column("answer").to_pylist()
    # the cached rows keep the usage the original call cost
    assert second.table.column("prompt_tokens").to_pylist() == first.table.column("prompt_tokens").to_pylist()


def test_prompt_edit_reasks_every_report(tmp_path):
    cache, prompt = tmp_path / "c.duckdb", tmp_path / "prompt"
    shutil.copytree(default_prompt_dir(), prompt)
    with StubServer() as server:
        first = extract_reports(reports_table(TEXTS), openai_backend(server, prompt_dir=prompt), cache)
        (prompt / "system.md").write_text((prompt / "system.md").read_text() + "\nOne more rule.\n")
        second = extract_reports(reports_table(TEXTS), openai_backend(server, prompt_dir=prompt), cache)
    assert second.stats.calls == len(TEXTS) and len(server.requests) == 2 * len(TEXTS)
    assert set(first.table.column("prompt_version").to_pylist()).isdisjoint(
        second.table.column("prompt_version").to_pylist())


def test_changing_one_report_reasks_only_it(tmp_path):
    cache = tmp_path / "c.duckdb"
    edited = list(TEXTS)
    edited[5] = "Study 5: moderate right pleural effusion."
    with StubServer() as server:
        extract_reports(reports_table(TEXTS), openai_backend(server), cache)
        second = extract_reports(reports_table(edited), openai_backend(server), cache)
    assert second.stats.calls == 1
    assert edited[5] in server.requests[-1]["messages"][-1]["content"]
    assert second.table.column("cached").to_pylist() == [i != 5 for i in range(len(TEXTS))]


def test_changing_model_or_temperature_reasks(tmp_path):
    cache = tmp_path / "c.duckdb"
    with StubServer() as server:
        extract_reports(reports_table(TEXTS[:2]), openai_backend(server), cache)
        by_model = extract_reports(reports_table(TEXTS[:2]), openai_backend(server, model="other"), cache)
        by_temp = extract_reports(reports_table(TEXTS[:2]), openai_backend(server, temperature=0.7), cache)
        by_timeout = extract_reports(reports_table(TEXTS[:2]), openai_backend(server, timeout_s=9), cache)
    assert (by_model.stats.calls, by_temp.stats.calls, by_timeout.stats.calls) == (2, 2, 0)


def test_duplicate_report_texts_are_asked_once(tmp_path):
    with StubServer() as server:
        result = extract_reports(reports_table(["Same text."] * 3), openai_backend(server), tmp_path / "c.duckdb")
    assert len(server.requests) == 1 and result.table.num_rows == 3
    assert result.table.column("answer").null_count == 0


def test_rules_backend_rerun_hits_cache_and_vocabulary_edit_reextracts(tmp_path):
    cache = tmp_path / "c.duckdb"
    vocab = tmp_path / "vocabulary.yaml"
    shutil.copy(REPO_ROOT / "knowledge" / "vocabulary.yaml", vocab)
    table = reports_table(["Mild cardiomegaly.", "No pleural effusion or pneumothorax.", ""])
    first = extract_reports(table, make_backend({"kind": "rules", "vocabulary_path": vocab}), cache)
    again = extract_reports(table, make_backend({"kind": "rules", "vocabulary_path": vocab}), cache)
    vocab.write_text(vocab.read_text() + "\n# local edit\n")
    edited = extract_reports(table, make_backend({"kind": "rules", "vocabulary_path": vocab}), cache)
    assert (first.stats.calls, again.stats.calls, edited.stats.calls) == (2, 0, 2)
    assert first.table.column("n_findings").to_pylist() == [1, 2, 0]


KILLABLE_RUN = textwrap.dedent("""
    import hashlib, sys
    import pyarrow as pa
    from extraction.backends import make_backend
    from extraction.extract import extract_reports
    base_url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = [f"Killable report {i}." for i in range(n)]
    table = pa.table({"study_id": [f"s{i}" for i in range(n)], "text": texts,
                      "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})
    backend = make_backend({"kind": "openai", "base_url": base_url, "model": "stub-llm",
                            "api_key_env": "%s", "concurrency": 2, "timeout_s": 5})
    extract_reports(table, backend, cache)
""" % API_KEY_ENV)


def test_killed_run_resumes_without_losing_or_duplicating_rows(tmp_path):
    n, concurrency = 30, 2
    cache = tmp_path / "c.duckdb"
    script = tmp_path / "run.py"
    script.write_text(KILLABLE_RUN)
    with StubServer(default="slow", delay_s=0.1) as server:
        child = subprocess.Popen([sys.executable, str(script), server.base_url, str(cache), str(n)],
                                 cwd=REPO_ROOT, env={**os.environ})
        deadline = time.monotonic() + 30
        while len(server.answered) < 8 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        served_before_kill = list(server.answered)

        with duckdb.connect(str(cache)) as db:
            committed = db.execute("SELECT count(*) FROM answers").fetchone()[0]
        # a kill loses at most the answers in flight
        assert len(served_before_kill) - concurrency <= committed < n

        server.default = "ok"
        texts = [f"Killable report {i}." for i in range(n)]
        backend = openai_backend(server, concurrency=concurrency)
        requests_before = len(server.requests)
        resumed = extract_reports(reports_table(texts), backend, cache)
        asked_again = [r["messages"][-1]["content"] for r in server.requests[requests_before:]]

    assert resumed.stats.calls == n - committed and resumed.stats.cache_hits == committed
    assert len(asked_again) == n - committed
    rows = resumed.table.to_pylist()
    already_answered = [texts[i] for i, r in enumerate(rows) if r["cached"]]
    assert not any(text in asked for text in already_answered for asked in asked_again)
    # every report answered once in total across both runs' committed answers
    assert sorted(resumed.table.column("study_id").to_pylist()) == sorted(f"s{i}" for i in range(n))
    assert resumed.table.column("answer").null_count == 0
    with duckdb.connect(str(cache)) as db:
        assert db.execute("SELECT count(*), count(DISTINCT cache_key) FROM answers").fetchone() == (n, n)


def test_rows_built_in_chunks_equal_one_chunk(tmp_path, monkeypatch):
    """extract_reports turns rows into Arrow a chunk at a time (memory): chunk boundaries,
    including a last partial chunk, change no row and no count."""
    import extraction.extract as extract

    texts = TEXTS + ["", "Heart size is normal."] + TEXTS[:2]  # an empty report and repeated texts
    rules = make_backend({"kind": "rules"})
    whole = extract_reports(reports_table(texts), rules, tmp_path / "a.duckdb")
    monkeypatch.setattr(extract, "_ROWS_PER_CHUNK", 2)
    chunked = extract_reports(reports_table(texts), rules, tmp_path / "b.duckdb")
    drop = {"latency_s"}  # timing of the call itself
    assert [{k: v for k, v in r.items() if k not in drop} for r in chunked.table.to_pylist()] == \
        [{k: v for k, v in r.items() if k not in drop} for r in whole.table.to_pylist()]
    assert (chunked.stats.cache_hits, chunked.stats.parse_errors, chunked.stats.empty_reports) == \
        (whole.stats.cache_hits, whole.stats.parse_errors, whole.stats.empty_reports)
    assert chunked.table.num_rows == len(texts) and chunked.stats.empty_reports == 1
    assert chunked.stats.cache_hits == whole.stats.cache_hits == 0
