"""LLM backend: any OpenAI-compatible chat-completions endpoint through the `openai` client.

The client's own retries are off (max_retries=0) and this module retries, so every HTTP
attempt is counted: 429, 5xx, timeouts and connection errors are retried with exponential
backoff and full jitter (a server's Retry-After is honoured up to the backoff cap); other
errors (400, 401, 404, unreadable responses) fail at once. Only the prompt and the report
text are sent: no study id, no user field, no metadata.

A circuit breaker, shared by the worker threads, stops the run when the endpoint is dead:
after ``circuit_breaker_failures`` attempts in a row that failed with a connection error, a
timeout or a 5xx (a 429 means the server is alive), every call raises EndpointUnavailable.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import openai

from extraction.config import OpenAIConfig
from extraction.interface import Answer, EndpointUnavailable, Usage
from extraction.prompts import (
    BATCH_INSTRUCTION,
    BATCH_JSON_INSTRUCTION,
    Prompt,
    default_prompt_dir,
    load_prompt,
    split_batch_answer,
)
from extraction.schema import AnswerSchema, configured_schema, request_fields, split_json_batch, versioned

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
             openai.APIConnectionError)
# Failures that say the endpoint itself is unwell (APITimeoutError is an APIConnectionError).
ENDPOINT_DOWN = (openai.InternalServerError, openai.APIConnectionError)

DEFAULT_MAX_TOKENS = 512
# Fields the openai client's create() takes by name; any other (vLLM's guided_json) goes in extra_body.
CLIENT_FIELDS = {"model", "messages", "temperature", "max_tokens", "response_format"}
# Before the server's usage gave a rate: 2 characters per token, fewer than any tokenizer gives on English.
UNMEASURED_TOKENS_PER_CHAR = 0.5
# llama.cpp and vLLM (OpenAI's wording): "This model's maximum context length is 8192 tokens. ..."
CONTEXT_REFUSAL = re.compile(r"maximum context length is (\d+)")
PROMPT_COUNT = re.compile(r"(\d+) in the messages")
REPAIR_INSTRUCTION = ("Your answer above could not be read ({problem}). Answer again for the same report, "
                      "in exactly the format the instructions give, and nothing else.")


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: OpenAIConfig, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        api_key = os.environ.get(config.api_key_env)
        if not api_key and config.mode != "offline_batch":  # offline run-batch talks to no server
            raise ValueError(f"environment variable {config.api_key_env} (the API key of {config.base_url}) is not "
                             f"set: export it, or name another variable with MEDFILIP_LLM_API_KEY_ENV")
        self.config = config
        self.model = config.model
        self.concurrency = config.concurrency
        self.mode = config.mode
        self.prompt: Prompt = load_prompt(config.prompt_dir or default_prompt_dir(config.response_format,
                                                                                  config.structured_output))
        self.answer_schema: AnswerSchema | None = configured_schema(config.structured_output, config.max_findings,
                                                                    config.max_tokens)
        self.version = versioned(self.prompt.version, self.answer_schema)
        # Per report; a request for K reports may use K times as many.
        self.max_tokens = config.max_tokens or (self.answer_schema.tokens_to_close() if self.answer_schema
                                                else DEFAULT_MAX_TOKENS)
        # Only what changes an answer goes into the cache key (not timeouts, concurrency or mode).
        self.params: dict[str, Any] = {"temperature": config.temperature,
                                       "max_tokens": self.max_tokens,
                                       "response_format": config.response_format,
                                       "base_url": config.base_url}
        if self.answer_schema is not None:
            self.params["structured_output"] = config.structured_output
        self.reports_per_request = config.reports_per_request
        if self.reports_per_request > 1:  # other reports in the context may change an answer
            self.params.update(reports_per_request=self.reports_per_request, batch_instruction=self._batch_instruction)
        self._client = openai.OpenAI(base_url=config.base_url or "http://offline.invalid/v1", api_key=api_key or "-",
                                     timeout=config.timeout_s, max_retries=0)
        self._sleep = sleep
        self.max_report_chars = config.max_report_chars
        self._breaker_lock = threading.Lock()
        self._endpoint_failures = 0  # attempts in a row that found the endpoint unwell
        self._open_reason: str | None = None
        self._context = ContextWindow(config.context_tokens)

    @property
    def _batch_instruction(self) -> str:
        return BATCH_JSON_INSTRUCTION if self.answer_schema is not None else BATCH_INSTRUCTION

    def complete(self, report_text: str) -> Answer:
        return self._chat(self.prompt.messages(report_text), 1)

    def complete_many(self, report_texts: list[str]) -> list[Answer | None]:
        """One request for several reports; each report's part of the answer, or None where the
        answer has no clean part for it (the caller asks that report alone). The request's
        usage is shared out evenly over the reports it answered."""
        if len(report_texts) == 1:
            return [self.complete(report_texts[0])]
        answer = self._chat(self.prompt.batch_messages(report_texts, self._batch_instruction), len(report_texts))
        if answer.error is not None or answer.text is None:
            return [None] * len(report_texts)
        split = split_json_batch if self.answer_schema is not None else split_batch_answer
        parts = split(answer.text, len(report_texts))
        share = max(1, sum(part is not None for part in parts))
        usage = Usage(answer.usage.prompt_tokens // share, answer.usage.completion_tokens // share)
        return [None if part is None else replace(answer, text=part, usage=usage) for part in parts]

    def repair(self, report_text: str, bad_answer: str, problem: str) -> Answer:
        """Ask once more, showing the model its unreadable answer and what was wrong with it."""
        messages = [*self.prompt.messages(report_text), {"role": "assistant", "content": bad_answer},
                    {"role": "user", "content": REPAIR_INSTRUCTION.format(problem=problem)}]
        return self._chat(messages, 1)

    def request_body(self, messages: list[dict[str, str]], n_reports: int = 1) -> dict[str, Any]:
        """The chat-completions body, every field at the top level (as a batch file holds it)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": self.config.temperature,
                                "max_tokens": self.max_tokens * n_reports}
        if self.answer_schema is not None:
            fields = request_fields(self.config.structured_output, self.answer_schema.for_reports(n_reports))
            body.update(fields.pop("extra_body", {}), **fields)
        elif self.config.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def request_fits(self, report_texts: list[str]) -> bool:
        """Whether one request for these reports, its answers' max_tokens included, fits the
        model's context window (as far as it is known: the server's /v1/models, a 400 that named
        it, or `context_tokens`), counting tokens at the rate the server's usage showed so far."""
        if len(report_texts) == 1:
            return True  # a report alone always goes: a too-long one gets the server's own refusal
        self._context.discover(self._client if self.mode == "online" else None)
        chars = len(self.prompt.system) + len(self._batch_instruction) + sum(len(t) + 12 for t in report_texts)
        return self._context.fits(chars, self.max_tokens * len(report_texts))

    @property
    def context_tokens(self) -> int | None:
        return self._context.tokens

    @property
    def tokens_per_char(self) -> float | None:
        """Prompt tokens per character, as the server's usage counted them so far."""
        return self._context.rate

    @property
    def client(self) -> openai.OpenAI:
        return self._client

    def _chat(self, messages: list[dict[str, str]], n_reports: int) -> Answer:
        started = time.perf_counter()
        request = self.request_body(messages, n_reports)
        extra = {key: request.pop(key) for key in list(request) if key not in CLIENT_FIELDS}
        if extra:
            request["extra_body"] = extra
        prompt_chars = sum(len(m["content"]) for m in messages)
        last_error = ""
        for attempt in range(1, self.config.max_attempts + 1):
            self._raise_if_open()
            try:
                response = self._client.chat.completions.create(**request)
            except RETRYABLE as exc:
                last_error = _describe(exc)
                self._record_attempt(exc)
                if attempt < self.config.max_attempts:
                    self._sleep(self._backoff_s(attempt, exc))
                continue
            except Exception as exc:  # not worth retrying: bad request, auth, garbage body
                self._record_attempt(None)
                self._context.learn_from_refusal(_describe(exc), prompt_chars)
                return self._failed(f"{_describe(exc)}", attempt, started)
            self._record_attempt(None)
            answer = self._answer(response, attempt, started)
            self._context.learn_rate(answer.usage.prompt_tokens, prompt_chars)
            return answer
        self._raise_if_open()
        return self._failed(f"gave up after {self.config.max_attempts} attempts: {last_error}",
                            self.config.max_attempts, started)

    def _record_attempt(self, exc: Exception | None) -> None:
        with self._breaker_lock:
            if not isinstance(exc, ENDPOINT_DOWN):
                if exc is None:  # the endpoint answered: it is alive
                    self._endpoint_failures = 0
                return
            self._endpoint_failures += 1
            if self._endpoint_failures >= self.config.circuit_breaker_failures and self._open_reason is None:
                self._open_reason = (f"{self._endpoint_failures} requests in a row to {self.config.base_url} failed "
                                     f"(last: {_describe(exc)}); check that the server is up and "
                                     f"MEDFILIP_LLM_BASE_URL / resources.extractor.config.base_url, then re-run: "
                                     f"answers received so far are cached")

    def _raise_if_open(self) -> None:
        if self._open_reason is not None:
            raise EndpointUnavailable(f"LLM endpoint unavailable: {self._open_reason}")

    def cost_usd(self, usage: Usage) -> float | None:
        """The cost of `usage` at this mode's prices (batch and offline_batch: the batch prices)."""
        config = self.config
        prompt_price, completion_price = ((config.price_prompt_per_1k, config.price_completion_per_1k)
                                          if self.mode == "online" else
                                          (config.batch_price_prompt_per_1k, config.batch_price_completion_per_1k))
        if prompt_price is None and completion_price is None:
            return None
        return (usage.prompt_tokens * (prompt_price or 0.0)
                + usage.completion_tokens * (completion_price or 0.0)) / 1000.0

    def close(self) -> None:
        self._client.close()

    def _answer(self, response: Any, attempts: int, started: float) -> Answer:
        body = response.model_dump() if hasattr(response, "model_dump") else response
        return answer_from_completion(body, self.model, attempts, time.perf_counter() - started)

    def _failed(self, error: str, attempts: int, started: float) -> Answer:
        return Answer(None, Usage(), time.perf_counter() - started, self.model, attempts, error)

    def _backoff_s(self, attempt: int, exc: Exception) -> float:
        cap = self.config.backoff_max_s
        delay = random.uniform(0, min(cap, self.config.backoff_base_s * 2 ** (attempt - 1)))
        retry_after = _retry_after_s(exc)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay


def answer_from_completion(body: dict[str, Any], model: str, attempts: int = 1, latency_s: float = 0.0) -> Answer:
    """An Answer from a chat-completion body (an online response, or a line of a batch's output)."""
    usage_body = body.get("usage") or {}
    usage = Usage(usage_body.get("prompt_tokens") or 0, usage_body.get("completion_tokens") or 0)
    choices = body.get("choices") or []
    content = (choices[0].get("message") or {}).get("content") if choices else None
    served = body.get("model") or model
    if not content:
        # Not cached: an empty completion is worth asking again next run.
        return Answer(None, usage, latency_s, served, attempts, "empty completion")
    return Answer(content, usage, latency_s, served, attempts)


class ContextWindow:
    """What is known of the model's context window and of its tokenizer's rate (tokens per
    character of prompt), shared by the worker threads."""

    def __init__(self, tokens: int | None) -> None:
        self.tokens = tokens
        self._rate: float | None = None
        self._asked = tokens is not None
        self._lock = threading.Lock()

    def discover(self, client: openai.OpenAI | None) -> None:
        """Ask the server's /v1/models once for the context length (vLLM: max_model_len; llama.cpp
        and others: n_ctx, context_length, meta.n_ctx_train)."""
        with self._lock:
            if self._asked or client is None:
                return
            self._asked = True
        try:
            models = [m.model_dump() for m in client.models.list().data]
        except Exception:  # a server without /v1/models: the context stays unknown until a 400 names it
            return
        for model in models:
            found = _context_length(model)
            if found:
                with self._lock:
                    self.tokens = self.tokens or found
                return

    @property
    def rate(self) -> float | None:
        return self._rate

    def fits(self, prompt_chars: int, answer_tokens: int) -> bool:
        with self._lock:
            if self.tokens is None:
                return True
            # The rate was measured on whole prompts; a request with more report text than those
            # may tokenize denser, hence the margin.
            rate = self._rate * 1.25 if self._rate else UNMEASURED_TOKENS_PER_CHAR
            return math.ceil(prompt_chars * rate) + answer_tokens <= self.tokens

    def learn_rate(self, prompt_tokens: int, prompt_chars: int) -> None:
        if prompt_tokens <= 0 or prompt_chars <= 0:
            return
        with self._lock:
            self._rate = max(self._rate or 0.0, prompt_tokens / prompt_chars)

    def learn_from_refusal(self, message: str, prompt_chars: int) -> None:
        """A context refusal names the window, and (llama.cpp, vLLM) the prompt's own token count."""
        found = CONTEXT_REFUSAL.search(message)
        if found:
            with self._lock:
                self.tokens = self.tokens or int(found.group(1))
        counted = PROMPT_COUNT.search(message)
        if counted:
            self.learn_rate(int(counted.group(1)), prompt_chars)


def _context_length(model: dict[str, Any]) -> int | None:
    meta = model.get("meta") or {}
    for value in (model.get("max_model_len"), model.get("context_length"), model.get("n_ctx"),
                  meta.get("n_ctx") if isinstance(meta, dict) else None,
                  meta.get("n_ctx_train") if isinstance(meta, dict) else None):
        if isinstance(value, int) and value > 0:
            return value
    return None


def _retry_after_s(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    """The exception's class, HTTP status and the server's own message where it gave one."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
    text = str(message or exc).splitlines()[0][:300] if str(message or exc) else ""
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {text}" if text else "")
