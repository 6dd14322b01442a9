"""DuckDB cache of backend answers, keyed by everything that determines an answer.

key = sha256(canonical JSON of backend version (prompt hash / rules hash), backend name,
model, answer-changing parameters, report text). Only successful answers are cached;
failures go to a separate log table, so the next run asks again. Each ``put`` is its own
committed transaction: a killed run loses at most the answers still in flight.
DuckDB allows one writing process, so one AnswerCache per run, used from one thread; a second
run that finds the file locked waits for it (up to ``lock_timeout_s``) instead of dying.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import duckdb
import pyarrow as pa

from extraction.interface import Answer, Backend

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    cache_key VARCHAR PRIMARY KEY,
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    answer VARCHAR NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    latency_s DOUBLE NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    name VARCHAR PRIMARY KEY,
    mode VARCHAR NOT NULL,
    input_path VARCHAR NOT NULL,
    file_id VARCHAR,
    batch_id VARCHAR,
    status VARCHAR NOT NULL,
    ingested BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_keys (
    name VARCHAR NOT NULL,
    cache_key VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    cache_key VARCHAR NOT NULL,
    backend VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    error VARCHAR NOT NULL,
    latency_s DOUBLE NOT NULL,
    attempts INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
"""


@dataclass(frozen=True)
class CachedAnswer:
    answer: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int


def cache_key(backend: Backend, report_text: str) -> str:
    identity = {"version": backend.version, "backend": backend.name, "model": backend.model,
                "params": backend.params, "text": report_text}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class CacheBusy(RuntimeError):
    """Another process kept the cache file locked for longer than we were willing to wait."""


class AnswerCache:
    def __init__(self, path: Path | str, lock_timeout_s: float = 1800.0,
                 on_wait: Callable[[str], None] | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = _connect_when_free(path, lock_timeout_s, on_wait)
        self._db.execute(_SCHEMA)

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def lookup(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """All cached answers among ``keys``, in one join (10k keys: one query, not 10k)."""
        wanted = pa.table({"cache_key": pa.array(list(dict.fromkeys(keys)), pa.string())})
        self._db.register("wanted_keys", wanted)
        try:
            rows = self._db.execute(
                "SELECT a.cache_key, answer, model, prompt_tokens, completion_tokens, latency_s,"
                " attempts FROM answers a JOIN wanted_keys w USING (cache_key)").fetchall()
        finally:
            self._db.unregister("wanted_keys")
        return {row[0]: CachedAnswer(*row[1:]) for row in rows}

    def put(self, key: str, backend: Backend, answer: Answer) -> None:
        """Store one successful answer (committed on return)."""
        self.put_many([(key, answer)], backend)

    def put_many(self, answers: list[tuple[str, Answer]], backend: Backend) -> None:
        """Store successful answers in one committed transaction (one fsync, not one each)."""
        if any(a.error is not None or a.text is None for _, a in answers):
            raise ValueError("failed answers are recorded with record_failure, never cached")
        if not answers:
            return
        now = datetime.now(timezone.utc)
        batch = pa.table({
            "cache_key": [k for k, _ in answers],
            "backend": [backend.name] * len(answers),
            "model": [a.model or backend.model for _, a in answers],
            "version": [backend.version] * len(answers),
            "answer": [a.text for _, a in answers],
            "prompt_tokens": pa.array([a.usage.prompt_tokens for _, a in answers], pa.int64()),
            "completion_tokens": pa.array([a.usage.completion_tokens for _, a in answers], pa.int64()),
            "latency_s": pa.array([a.latency_s for _, a in answers], pa.float64()),
            "attempts": pa.array([a.attempts for _, a in answers], pa.int32()),
            "created_at": pa.array([now] * len(answers), pa.timestamp("us", tz="UTC")),
        })
        self._db.register("new_answers", batch)
        try:
            self._db.execute("INSERT OR REPLACE INTO answers SELECT * FROM new_answers")
        finally:
            self._db.unregister("new_answers")

    def record_failure(self, key: str, backend: Backend, answer: Answer) -> None:
        self._db.execute(
            "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [key, backend.name, answer.model or backend.model, backend.version,
             answer.error or "unknown error", answer.latency_s, answer.attempts,
             datetime.now(timezone.utc)])

    # The batch ledger: every step of a batch is committed as it happens, so a killed run resumes
    # from the recorded file and batch ids and never asks a request twice.
    def record_batch(self, name: str, mode: str, input_path: Path, keys: list[str]) -> None:
        self._db.execute("BEGIN")
        self._db.execute("INSERT INTO batches VALUES (?, ?, ?, NULL, NULL, 'written', false, ?)",
                         [name, mode, str(input_path), datetime.now(timezone.utc)])
        self._db.register("new_keys", pa.table({"name": [name] * len(keys), "cache_key": keys}))
        try:
            self._db.execute("INSERT INTO batch_keys SELECT * FROM new_keys")
        finally:
            self._db.unregister("new_keys")
        self._db.execute("COMMIT")

    def update_batch(self, name: str, **fields: object) -> None:
        allowed = {"file_id", "batch_id", "status", "ingested"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"batch fields are {sorted(allowed)}")
        assignments = ", ".join(f"{field} = ?" for field in fields)
        self._db.execute(f"UPDATE batches SET {assignments} WHERE name = ?", [*fields.values(), name])

    def open_batches(self) -> list[dict[str, object]]:
        """Batches not yet ingested, oldest first."""
        cursor = self._db.execute("SELECT name, mode, input_path, file_id, batch_id, status FROM batches "
                                  "WHERE NOT ingested ORDER BY created_at, name")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def batch_keys(self, name: str) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT cache_key FROM batch_keys WHERE name = ?", [name]).fetchall()]

    def completion_tokens_mean(self, backend: Backend) -> float | None:
        """Mean completion tokens of this backend's and model's cached answers (for estimates)."""
        value = self._db.execute("SELECT avg(completion_tokens) FROM answers WHERE backend = ? AND model LIKE ?",
                                 [backend.name, f"{backend.model}%"]).fetchall()[0][0]
        return float(value) if value is not None else None

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM answers").fetchone()[0]

    def failure_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM failures").fetchone()[0]


def _connect_when_free(path: Path, timeout_s: float, on_wait: Callable[[str], None] | None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            holder = str(exc).split("Conflicting lock is held in", 1)[-1].strip().rstrip(".") if "Conflicting" in str(exc) else "another process"
            if time.monotonic() >= deadline:
                raise CacheBusy(f"the extraction cache {path} stayed locked by {holder} for {timeout_s:.0f} s: "
                                f"wait for the other extraction run to finish (or stop it), then re-run") from None
            if not told and on_wait is not None:
                on_wait(f"extraction cache {path} is in use by {holder}; waiting for it")
                told = True
            time.sleep(1.0)
