"""Batch mode: the cache misses as an OpenAI-format batch file, answered by OpenAI's Batch API
(`mode: batch`) or by vLLM's offline `run-batch` (`mode: offline_batch`), every answer committed
to the same cache as online mode.

Each batch is recorded in the cache's ledger as it goes (file written -> uploaded -> created ->
ingested), so a killed run resumes from the recorded ids: keys that sit in an open batch are
never put in a new one, and a batch created just before a kill is found again by its input file.
One line per report (custom_id = its cache key). A finished batch's output lines are parsed
and committed; an unreadable answer gets the online repair request where there is a server
(mode batch) and is a recorded failure offline. Lines that never ran (an expired batch, an error
file, a failed batch) are recorded failures, asked again by the next run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from common.storage import write_text
from extraction.cache import AnswerCache
from extraction.interface import Answer, Backend, Usage

# OpenAI's limits per batch input file: 50,000 requests and 200 MB; a margin under the size.
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 190 * 1024 * 1024
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ENDPOINT = "/v1/chat/completions"


class BatchPending(RuntimeError):
    """A batch is not finished within this run (or, offline, its output file is not there yet):
    the message says what to run or wait for; answers committed so far stay cached."""


def batch_line(backend: Backend, key: str, text: str) -> str:
    body = backend.request_body(backend.prompt.messages(text))  # type: ignore[attr-defined]
    return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)


def chunk_lines(lines: list[tuple[str, str]], max_requests: int = MAX_REQUESTS_PER_FILE,
                max_bytes: int = MAX_BYTES_PER_FILE) -> Iterator[list[tuple[str, str]]]:
    """(key, line) pairs in chunks that each make one file within the API's limits."""
    chunk: list[tuple[str, str]] = []
    size = 0
    for key, line in lines:
        line_bytes = len(line.encode()) + 1
        if chunk and (len(chunk) >= max_requests or size + line_bytes > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append((key, line))
        size += line_bytes
    if chunk:
        yield chunk


def offline_command(input_path: Path | str, output_path: Path | str, model: str) -> str:
    return f"python -m vllm.entrypoints.openai.run_batch -i {input_path} -o {output_path} --model {model}"


def output_path_of(input_path: Path | str) -> Path:
    path = Path(input_path)
    return path.with_name(path.name.replace(".jsonl", ".output.jsonl"))


def ask_batch(backend: Backend, keys: list[str], text_of: dict[str, str], cache: AnswerCache,
              batch_dir: Path, log: Callable[[str], None] = print,
              examine: Callable[[Backend, Answer], Answer] = lambda b, a: a,
              repair: Callable[[Backend, str, Answer], Answer] | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[str, Answer]]:
    """Yield (key, answer) for every key, each committed to the cache first, through batches:
    open batches of earlier runs first, then new ones for the keys left."""
    mode = backend.mode  # type: ignore[attr-defined]
    wanted = set(keys)
    runs: list[dict[str, Any]] = []
    for batch in cache.open_batches():
        batch_keys = cache.batch_keys(str(batch["name"]))
        if batch["mode"] != mode or not wanted.intersection(batch_keys):
            continue  # another mode's, or its reports are no longer asked (a prompt change)
        log(f"resuming batch {batch['name']} ({batch['batch_id'] or batch['input_path']}, {len(batch_keys)} requests)")
        wanted.difference_update(batch_keys)
        runs.append(batch)
    fresh = [k for k in keys if k in wanted]
    # The time for people reading the folder, a random part so two runs in one second differ.
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    for number, chunk in enumerate(chunk_lines([(k, batch_line(backend, k, text_of[k])) for k in fresh])):
        name = f"medfilip-{stamp}-{number:03d}"
        path = batch_dir / f"{name}.jsonl"
        write_text(path, "".join(line + "\n" for _, line in chunk))
        cache.record_batch(name, mode, path, [k for k, _ in chunk])
        runs.append({"name": name, "mode": mode, "input_path": str(path), "file_id": None, "batch_id": None,
                     "status": "written"})
        log(f"batch {name}: {len(chunk)} requests written to {path}")
    if mode == "offline_batch":
        yield from _offline(backend, runs, text_of, cache, log, examine)
    else:
        for run in runs:
            _submit(backend, run, cache, log)
        yield from _poll(backend, runs, text_of, cache, log, examine, repair, sleep)


def _offline(backend: Backend, runs: list[dict[str, Any]], text_of: dict[str, str], cache: AnswerCache,
             log: Callable[[str], None], examine: Callable[[Backend, Answer], Answer]) -> Iterator[tuple[str, Answer]]:
    waiting = []
    for run in runs:
        output = output_path_of(run["input_path"])
        if not output.is_file():
            waiting.append(offline_command(run["input_path"], output, backend.model))
            continue
        log(f"batch {run['name']}: ingesting {output}")
        yield from _ingest(backend, run, output.read_text(), "", text_of, cache, examine, None)
    if waiting:
        raise BatchPending(f"{len(waiting)} offline batch file(s) wait for vLLM: run `{waiting[0]}`"
                           + (f" (and {len(waiting) - 1} more, see the log)" if len(waiting) > 1 else "")
                           + ", then re-run extraction to ingest the output")


def _submit(backend: Backend, run: dict[str, Any], cache: AnswerCache, log: Callable[[str], None]) -> None:
    """Upload the file and create the batch, recording each id as soon as it exists."""
    client = backend.client  # type: ignore[attr-defined]
    if run["batch_id"]:
        return
    if not run["file_id"]:
        with open(run["input_path"], "rb") as handle:
            run["file_id"] = client.files.create(file=handle, purpose="batch").id
        cache.update_batch(run["name"], file_id=run["file_id"], status="uploaded")
    # A batch created just before a kill, before its id was recorded: find it by its input file.
    existing = next((b for b in client.batches.list(limit=100) if b.input_file_id == run["file_id"]), None)
    created = existing or client.batches.create(input_file_id=run["file_id"], endpoint=ENDPOINT,
                                                completion_window="24h", metadata={"medfilip_batch": run["name"]})
    run.update(batch_id=created.id, status=created.status)
    cache.update_batch(run["name"], batch_id=created.id, status=created.status)
    log(f"batch {run['name']}: {'found' if existing else 'created'} {created.id} ({created.status})")


def _poll(backend: Backend, runs: list[dict[str, Any]], text_of: dict[str, str], cache: AnswerCache,
          log: Callable[[str], None], examine: Callable[[Backend, Answer], Answer],
          repair: Callable[[Backend, str, Answer], Answer] | None,
          sleep: Callable[[float], None]) -> Iterator[tuple[str, Answer]]:
    client = backend.client  # type: ignore[attr-defined]
    config = backend.config  # type: ignore[attr-defined]
    deadline = time.monotonic() + config.batch_wait_s
    open_runs = list(runs)
    while open_runs:
        for run in list(open_runs):
            batch = client.batches.retrieve(run["batch_id"])
            if batch.status != run["status"]:
                cache.update_batch(run["name"], status=batch.status)
                run["status"] = batch.status
                log(f"batch {run['name']} ({batch.id}): {batch.status}")
            if batch.status not in TERMINAL:
                continue
            open_runs.remove(run)
            output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
            errors = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
            why = _batch_errors(batch) if batch.status != "completed" else ""
            yield from _ingest(backend, run, output, errors, text_of, cache, examine, repair, why)
        if open_runs:
            if time.monotonic() >= deadline:
                ids = ", ".join(r["batch_id"] for r in open_runs)
                raise BatchPending(f"batch(es) {ids} not finished after {config.batch_wait_s:g} s (batch_wait_s): "
                                   f"re-run extraction later to resume them (their ids are recorded in the cache)")
            sleep(config.batch_poll_s)


def _ingest(backend: Backend, run: dict[str, Any], output: str, errors: str, text_of: dict[str, str],
            cache: AnswerCache, examine: Callable[[Backend, Answer], Answer],
            repair: Callable[[Backend, str, Answer], Answer] | None, why: str = "") -> Iterator[tuple[str, Answer]]:
    """Commit every line of a finished batch; every key of it gets an answer or a recorded failure."""
    keys = cache.batch_keys(run["name"])
    answers: dict[str, Answer] = {}
    for line in (output + "\n" + errors).splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key = record.get("custom_id")
        if key in answers or key not in keys:
            continue
        answers[key] = _line_answer(backend, record, examine)
    for key in keys:
        answer = answers.get(key) or Answer(None, Usage(), 0.0, backend.model, 1,
                                            f"batch {run.get('batch_id') or run['name']} ended "
                                            f"{run.get('status', '')} before this request ran{why}")
        if answer.parsed is not None and answer.parsed.error is not None:
            if repair is not None and key in text_of:
                answer = repair(backend, text_of[key], answer)
            else:
                answer = replace(answer, error=f"answer unreadable (offline batch, no repair request): "
                                               f"{answer.parsed.error}")
        if answer.error is None and answer.text is not None:
            cache.put(key, backend, answer)
        else:
            cache.record_failure(key, backend, answer)
        if key in text_of:
            yield key, answer
    cache.update_batch(run["name"], ingested=True)


def _line_answer(backend: Backend, record: dict[str, Any], examine: Callable[[Backend, Answer], Answer]) -> Answer:
    from extraction.openai_backend import answer_from_completion

    response = record.get("response") or {}
    if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
        return examine(backend, answer_from_completion(response["body"], backend.model))
    error = record.get("error") or (response.get("body") or {}).get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    status = response.get("status_code")
    return Answer(None, Usage(), 0.0, backend.model, 1,
                  f"batch request failed{f' ({status})' if status else ''}: {message or 'no message'}")


def _batch_errors(batch: Any) -> str:
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    messages = [getattr(e, "message", "") or "" for e in data]
    return f" ({'; '.join(m for m in messages if m)[:200]})" if any(messages) else ""
