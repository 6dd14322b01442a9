"""The extraction run: look every report up in the cache, ask the backend only for misses.

Workers (threads, at most ``backend.concurrency`` in flight) only call the backend; the
main thread alone writes to DuckDB, committing answers as they arrive, so killing the run
loses at most the calls in flight. Reports with identical text share one call.

An answer the parser cannot read gets one repair request (backends that offer ``repair``);
still unreadable, it is recorded as a failure, never cached, and asked again next run. Text
beyond the backend's ``max_report_chars`` is not sent and the row says how much was cut.
Each fresh answer is parsed once (in the worker that received it) and its findings go into the
row, so `triplets` reads them instead of parsing again. With an answer schema, an answer that
does not follow it means the server ignores structured outputs: the run says so once
(``on_notice`` and the result's notices) and goes on through the parser and its repair request.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from extraction.batch import ask_batch
from extraction.cache import AnswerCache, CachedAnswer, cache_key
from extraction.estimate import Estimate, estimate
from extraction.interface import Answer, Backend, EndpointUnavailable, Usage
from extraction.parse import ParsedAnswer, parse_answer

EMPTY_REPORT_ERROR = "empty report"
UNUSABLE_REPORT_ERROR = "report not usable (see its flag in `reports`)"
UNREADABLE_ANSWER_ERROR = "answer unreadable after one repair request"
# Input problems, recorded in `reports`; not failures of the backend.
INPUT_ERRORS = (EMPTY_REPORT_ERROR, UNUSABLE_REPORT_ERROR)
_ROWS_PER_CHUNK = 8192
ProgressCallback = Callable[[int, int], None]  # (reports done, reports total)

FINDING_TYPE = pa.struct([("severity", pa.string()), ("location", pa.string()), ("category", pa.string()),
                          ("uncertain", pa.bool_()), ("sentence", pa.string())])
LLM_EXTRACTIONS_SCHEMA = pa.schema([
    ("study_id", pa.string()),
    ("text_sha256", pa.string()),
    ("cache_key", pa.string()),
    ("prompt_version", pa.string()),
    ("backend", pa.string()),
    ("model", pa.string()),
    ("answer", pa.string()),
    ("parse_error", pa.string()),
    ("n_findings", pa.int32()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("attempts", pa.int32()),
    ("error", pa.string()),
    ("cached", pa.bool_()),
    ("truncated_chars", pa.int32()),
    ("findings", pa.list_(FINDING_TYPE)),  # the parsed answer (null without an answer)
])


@dataclass
class ExtractionStats:
    reports: int = 0
    calls: int = 0  # backend.complete() invocations this run
    attempts: int = 0  # HTTP attempts behind those calls (retries included)
    cache_hits: int = 0
    misses: int = 0
    errors: int = 0  # calls that failed after retries or stayed unreadable (not cached)
    unreadable: int = 0  # of which: answers unreadable after the repair request
    repairs: int = 0  # repair requests sent
    empty_reports: int = 0  # empty or not usable: never sent
    truncated_reports: int = 0
    parse_errors: int = 0
    schema_violations: int = 0  # fresh answers that did not follow the answer schema
    prompt_tokens: int = 0  # spent by this run's calls
    completion_tokens: int = 0
    cost_usd: float | None = None  # None when the backend has no prices configured
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    def add(self, other: "ExtractionStats") -> None:
        """Accumulate another run's counts (cost stays None until some part has a price)."""
        for name, value in other.as_dict().items():
            if name == "cost_usd":
                if value is not None:
                    self.cost_usd = (self.cost_usd or 0.0) + value
            else:
                setattr(self, name, getattr(self, name) + value)

    def answered(self) -> int:
        """Reports that got an answer to parse: neither empty nor failed at the backend."""
        return self.reports - self.empty_reports - (self.errors - self.unreadable)

    def parse_failure_rate(self) -> float:
        answered = self.answered()
        return self.parse_errors / answered if answered > 0 else 0.0


@dataclass
class ExtractionResult:
    table: pa.Table  # llm_extractions, one row per input report, input order
    stats: ExtractionStats
    notices: list[str] = field(default_factory=list)  # what the run said once (a server ignoring the schema)
    estimate: Estimate | None = None  # of the cache misses, made before the first request


def extract_reports(reports: pa.Table, backend: Backend, cache_path: Path | str,
                    progress: ProgressCallback | None = None,
                    on_cache_wait: Callable[[str], None] | None = None,
                    on_notice: Callable[[str], None] | None = None,
                    on_info: Callable[[str], None] | None = None) -> ExtractionResult:
    """Extract findings for every report (columns study_id, text, text_sha256; optional `usable`:
    False rows are recorded, not sent). Raises EndpointUnavailable when the backend's endpoint
    is down, and BatchPending when a batch is not done within the run, after committing every
    answer received. `on_info` hears the estimate before any request, and the batches' steps."""
    started = time.perf_counter()
    missing = {"study_id", "text", "text_sha256"} - set(reports.column_names)
    if missing:
        raise ValueError(f"reports table lacks column(s) {sorted(missing)}")
    study_ids = reports.column("study_id").to_pylist()
    full_texts = [t or "" for t in reports.column("text").to_pylist()]
    usable = (reports.column("usable").to_pylist() if "usable" in reports.column_names
              else [True] * len(full_texts))
    limit = getattr(backend, "max_report_chars", None)
    texts = [t[:limit] if limit else t for t in full_texts]
    cut = [len(full) - len(sent) for full, sent in zip(full_texts, texts)]
    text_hashes = reports.column("text_sha256").to_pylist()
    keys = [cache_key(backend, text) if text.strip() and ok is not False else None
            for text, ok in zip(texts, usable)]
    stats = ExtractionStats(reports=len(texts))
    notices: list[str] = []

    with AnswerCache(cache_path, on_wait=on_cache_wait) as cache:
        cached = cache.lookup(k for k in keys if k is not None)
        fresh: dict[str, Answer] = {}
        pending = list(dict.fromkeys(k for k in keys if k is not None and k not in cached))
        text_of = {k: t for k, t in zip(keys, texts) if k is not None}
        stats.misses = len(pending)
        done = sum(1 for k in keys if k is None or k in cached)
        if progress:
            progress(done, len(texts))
        per_key = _count_rows(keys)
        before = estimate(backend, [text_of[k] for k in pending], cache) if pending else None
        if before is not None and on_info:
            on_info(before.line(getattr(backend, "mode", "online")))
        if getattr(backend, "mode", "online") == "online":
            answers = _ask(backend, pending, text_of, cache)
        else:
            answers = ask_batch(backend, pending, text_of, cache, Path(cache_path).parent / "batches",
                                on_info or (lambda message: None), examine, repair_answer)
        for key, answer in answers:
            fresh[key] = answer
            _account(stats, backend, answer)
            if answer.schema_problem is not None and not notices:
                notices.append(_schema_notice(backend, answer.schema_problem))
                if on_notice:
                    on_notice(notices[0])
            done += per_key[key]
            if progress:
                progress(done, len(texts))

    del text_of, texts, full_texts  # the rows need none of the report texts
    # Rows become Arrow a chunk at a time: a whole archive's rows as Python dicts would be
    # the largest thing this stage holds.
    parts, rows = [], []
    for sid, sha, key, ok, n_cut in zip(study_ids, text_hashes, keys, usable, cut):
        rows.append(_row(sid, sha, key, backend, cached.get(key) if key else None,
                         fresh.get(key) if key else None, ok, n_cut))
        if len(rows) == _ROWS_PER_CHUNK or len(parts) * _ROWS_PER_CHUNK + len(rows) == len(keys):
            stats.cache_hits += sum(1 for r in rows if r["cached"])
            stats.parse_errors += sum(1 for r in rows if r["parse_error"] is not None)
            parts.append(pa.Table.from_pylist(rows, schema=LLM_EXTRACTIONS_SCHEMA))
            rows = []
    table = pa.concat_tables(parts) if parts else LLM_EXTRACTIONS_SCHEMA.empty_table()
    stats.empty_reports = sum(1 for k in keys if k is None)
    stats.truncated_reports = sum(1 for n in cut if n > 0)
    stats.wall_s = time.perf_counter() - started
    return ExtractionResult(table, stats, notices, before)


def extract_shards(report_paths: Iterable[Path], backend: Backend, cache_path: Path | str,
                   progress: ProgressCallback | None = None,
                   on_cache_wait: Callable[[str], None] | None = None,
                   on_notice: Callable[[str], None] | None = None,
                   on_info: Callable[[str], None] | None = None) -> ExtractionResult:
    """Extract every `reports` shard file (one Parquet per shard) as one batch: a single window
    of `concurrency` calls spans all shards, so one slow report holds up one slot, not a shard."""
    tables = []
    for path in report_paths:
        table = pq.read_table(path, columns=["study_id", "extraction_text", "text_sha256", "usable"])
        tables.append(table.rename_columns(["study_id", "text", "text_sha256", "usable"]))
    if not tables:
        return ExtractionResult(LLM_EXTRACTIONS_SCHEMA.empty_table(), ExtractionStats())
    return extract_reports(pa.concat_tables(tables), backend, cache_path, progress, on_cache_wait, on_notice, on_info)


def failure_summary(table: pa.Table, max_error_rate: float) -> str | None:
    """One line saying why the extraction is unusable, or None: too many reports without an
    answer (backend errors and unreadable answers; empty or unusable reports do not count)."""
    errors = table.column("error").to_pylist()
    sent = sum(1 for e in errors if e not in INPUT_ERRORS)
    failed = backend_failures(table)
    if sent == 0:
        return (f"none of the {table.num_rows} reports has text to extract (all empty or flagged unusable in "
                f"`reports`): check the report files and the `reports` asset's flags")
    rate = len(failed) / sent
    if rate <= max_error_rate:
        return None
    reasons = "; ".join(sorted({f["error"][:120] for f in failed})[:3])
    return (f"{len(failed)} of {sent} reports got no usable answer ({rate:.0%} > max_error_rate {max_error_rate:g}); "
            f"first reasons: {reasons}. Answers received are cached: fix the cause and re-run")


def backend_failures(table: pa.Table) -> list[dict]:
    """(study_id, error) of every report the backend gave no answer for (empty reports aside)."""
    return [r for r in table.select(["study_id", "error"]).to_pylist() if r["error"] and r["error"] not in INPUT_ERRORS]


def _ask(backend: Backend, keys: list[str], text_of: dict[str, str],
         cache: AnswerCache) -> Iterator[tuple[str, Answer]]:
    """Yield (key, answer) as answers arrive, after committing each one to the cache. Keys go
    out in units of `reports_per_request` (1 for most backends)."""
    commit_every = max(1, int(getattr(backend, "commit_every", 1)))
    units = _units(backend, keys, text_of)
    if backend.concurrency <= 1:
        batch: list[tuple[str, Answer]] = []
        for unit in units:
            batch.extend(zip(unit, _answer_unit(backend, [text_of[k] for k in unit])))
            if len(batch) >= commit_every:
                yield from _commit(cache, backend, batch)
                batch = []
        yield from _commit(cache, backend, batch)
        return
    # Bounded window: never more than `concurrency` requests in flight, so a kill loses few.
    remaining = iter(units)
    with ThreadPoolExecutor(max_workers=backend.concurrency,
                            thread_name_prefix=f"extract-{backend.name}") as pool:
        in_flight: dict[Future[list[Answer]], list[str]] = {}

        def submit_next() -> None:
            unit = next(remaining, None)
            if unit is not None:
                in_flight[pool.submit(_answer_unit, backend, [text_of[k] for k in unit])] = unit

        for _ in range(backend.concurrency):
            submit_next()
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = in_flight.pop(future)
                submit_next()
                yield from _commit(cache, backend, list(zip(unit, future.result())))


def _units(backend: Backend, keys: list[str], text_of: dict[str, str]) -> Iterator[list[str]]:
    """Keys in request units of at most `reports_per_request`, each small enough for the model's
    context window as the backend knows it when the unit is formed (lazily: later units use the
    token counts of earlier answers)."""
    per_request = max(1, int(getattr(backend, "reports_per_request", 1)))
    fits = getattr(backend, "request_fits", None)
    unit: list[str] = []
    for key in keys:
        candidate = [*unit, key]
        if unit and (len(candidate) > per_request
                     or (fits is not None and not fits([text_of[k] for k in candidate]))):
            yield unit
            candidate = [key]
        unit = candidate
    if unit:
        yield unit


def _answer_unit(backend: Backend, texts: list[str]) -> list[Answer]:
    """Answers for one request's reports. A report the batched answer gives no clean, readable
    part for is asked again alone, so no report ever gets another one's findings."""
    if len(texts) == 1:
        return [_answer_readably(backend, texts[0])]
    parts = _safe_call(backend.complete_many, backend, texts)  # type: ignore[attr-defined]
    if isinstance(parts, Answer):  # the call itself broke: every report alone
        parts = [None] * len(texts)
    examined = [None if part is None else examine(backend, part) for part in parts]
    return [part if part is not None and part.error is None and part.parsed.error is None  # type: ignore[union-attr]
            else _answer_readably(backend, text) for part, text in zip(examined, texts)]


def _answer_readably(backend: Backend, text: str) -> Answer:
    """The backend's answer; an unreadable one gets one repair request, and if that is still
    unreadable the answer comes back as an error (so it is not cached)."""
    answer = examine(backend, _safe_call(backend.complete, backend, text))
    if answer.parsed is None or answer.parsed.error is None:
        return answer
    return repair_answer(backend, text, answer)


def repair_answer(backend: Backend, text: str, answer: Answer) -> Answer:
    """One repair request for an examined, unreadable answer; still unreadable, the answer comes
    back as an error (so it is not cached). Without `repair` it is that error. (Offline batches
    never get here: batch._ingest records their unreadable answers itself.)"""
    problem = answer.parsed.error if answer.parsed is not None else None
    repair = getattr(backend, "repair", None)
    if repair is not None:
        second = examine(backend, _safe_call(repair, backend, text, answer.text, problem))
        combined = Usage(answer.usage.prompt_tokens + second.usage.prompt_tokens,
                         answer.usage.completion_tokens + second.usage.completion_tokens)
        answer = replace(second, usage=combined, latency_s=answer.latency_s + second.latency_s,
                         attempts=answer.attempts + second.attempts, repaired=True,
                         schema_problem=answer.schema_problem or second.schema_problem)
        if answer.parsed is None or answer.parsed.error is None:
            return answer
        problem = answer.parsed.error
    if answer.error is not None:
        return answer
    return replace(answer, error=f"{UNREADABLE_ANSWER_ERROR}: {problem}")


def examine(backend: Backend, answer: Answer) -> Answer:
    """The answer with its one parse, and whether it follows the backend's answer schema."""
    if answer.error is not None or answer.text is None:
        return answer
    parsed = parse_answer(answer.text)
    schema = getattr(backend, "answer_schema", None)
    return replace(answer, parsed=parsed, schema_problem=schema.problem(parsed) if schema is not None else None)


def _schema_notice(backend: Backend, problem: str) -> str:
    dialect = backend.params.get("structured_output", "?")
    return (f"answers do not follow the answer schema (structured_output {dialect}; first: {problem}): the server "
            f"seems to ignore it, so answers go through the parser and its repair request; use a server that "
            f"enforces {dialect}, or another structured_output dialect")


def _safe_call(call: Callable[..., Any], backend: Backend, *args: object) -> Any:
    started = time.perf_counter()
    try:
        return call(*args)
    except EndpointUnavailable:
        raise
    except Exception as exc:  # a backend bug becomes a recorded error, not a lost run
        return Answer(None, Usage(), time.perf_counter() - started, backend.model, 1,
                      f"backend raised {type(exc).__name__}: {exc}")


def _commit(cache: AnswerCache, backend: Backend,
            batch: list[tuple[str, Answer]]) -> Iterator[tuple[str, Answer]]:
    cache.put_many([(k, a) for k, a in batch if a.error is None and a.text is not None], backend)
    for key, answer in batch:
        if answer.error is not None or answer.text is None:
            cache.record_failure(key, backend, answer)
    yield from batch


def _account(stats: ExtractionStats, backend: Backend, answer: Answer) -> None:
    stats.calls += 1
    stats.attempts += answer.attempts
    stats.prompt_tokens += answer.usage.prompt_tokens
    stats.completion_tokens += answer.usage.completion_tokens
    stats.repairs += int(answer.repaired)
    stats.schema_violations += int(answer.schema_problem is not None)
    if answer.error is not None or answer.text is None:
        stats.errors += 1
        stats.unreadable += int(answer.error is not None and answer.error.startswith(UNREADABLE_ANSWER_ERROR))
    cost = backend.cost_usd(answer.usage)
    if cost is not None:
        stats.cost_usd = (stats.cost_usd or 0.0) + cost


def _count_rows(keys: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _row(study_id: str, text_sha256: str, key: str | None, backend: Backend,
         cached: CachedAnswer | None, fresh: Answer | None, usable: bool | None,
         truncated_chars: int) -> dict[str, object]:
    row: dict[str, object] = {
        "study_id": study_id, "text_sha256": text_sha256, "cache_key": key,
        "prompt_version": backend.version, "backend": backend.name, "model": backend.model,
        "answer": None, "parse_error": None, "n_findings": 0, "prompt_tokens": 0,
        "completion_tokens": 0, "latency_s": 0.0, "attempts": 0, "error": None, "cached": False,
        "truncated_chars": truncated_chars, "findings": None,
    }
    if key is None:
        row["error"] = UNUSABLE_REPORT_ERROR if usable is False else EMPTY_REPORT_ERROR
        return row
    if cached is not None:
        row.update(model=cached.model, answer=cached.answer, prompt_tokens=cached.prompt_tokens,
                   completion_tokens=cached.completion_tokens, latency_s=cached.latency_s,
                   attempts=cached.attempts, cached=True)
    elif fresh is not None:
        row.update(model=fresh.model or backend.model, answer=fresh.text,
                   prompt_tokens=fresh.usage.prompt_tokens,
                   completion_tokens=fresh.usage.completion_tokens, latency_s=fresh.latency_s,
                   attempts=fresh.attempts, error=fresh.error)
    if row["answer"] is not None:
        parsed = (fresh.parsed if fresh is not None and fresh.parsed is not None
                  else parse_answer(row["answer"]))  # type: ignore[arg-type]
        row["parse_error"] = parsed.error
        row["n_findings"] = len(parsed.findings)
        row["findings"] = finding_rows(parsed)
    return row


def finding_rows(parsed: ParsedAnswer) -> list[dict[str, object]]:
    """The parsed findings as rows of the `findings` column (FINDING_TYPE: ParsedFinding's fields)."""
    return [asdict(f) for f in parsed.findings]
