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

import os
import random
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import openai

from extraction.config import OpenAIConfig
from extraction.interface import Answer, EndpointUnavailable, Usage
from extraction.prompts import BATCH_INSTRUCTION, Prompt, default_prompt_dir, load_prompt, split_batch_answer

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
             openai.APIConnectionError)
# Failures that say the endpoint itself is unwell (APITimeoutError is an APIConnectionError).
ENDPOINT_DOWN = (openai.InternalServerError, openai.APIConnectionError)

REPAIR_INSTRUCTION = ("Your answer above could not be read ({problem}). Answer again for the same report, "
                      "in exactly the format the instructions give, and nothing else.")


class OpenAIBackend:
    name = "openai"

    def __init__(self, config: OpenAIConfig, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {config.api_key_env} (the API key of {config.base_url}) is not "
                             f"set: export it, or name another variable with MEDFILIP_LLM_API_KEY_ENV")
        self.config = config
        self.model = config.model
        self.concurrency = config.concurrency
        self.prompt: Prompt = load_prompt(config.prompt_dir or default_prompt_dir(config.response_format))
        self.version = self.prompt.version
        # Only what changes an answer goes into the cache key (not timeouts or concurrency).
        self.params: dict[str, Any] = {"temperature": config.temperature,
                                       "max_tokens": config.max_tokens,
                                       "response_format": config.response_format,
                                       "base_url": config.base_url}
        self.reports_per_request = config.reports_per_request
        if self.reports_per_request > 1:  # other reports in the context may change an answer
            self.params.update(reports_per_request=self.reports_per_request, batch_instruction=BATCH_INSTRUCTION)
        self._client = openai.OpenAI(base_url=config.base_url, api_key=api_key,
                                     timeout=config.timeout_s, max_retries=0)
        self._sleep = sleep
        self.max_report_chars = config.max_report_chars
        self._breaker_lock = threading.Lock()
        self._endpoint_failures = 0  # attempts in a row that found the endpoint unwell
        self._open_reason: str | None = None

    def complete(self, report_text: str) -> Answer:
        return self._chat(self.prompt.messages(report_text))

    def complete_many(self, report_texts: list[str]) -> list[Answer | None]:
        """One request for several reports; each report's part of the answer, or None where the
        answer has no clean part for it (the caller asks that report alone). The request's
        usage is shared out evenly over the reports it answered."""
        if len(report_texts) == 1:
            return [self.complete(report_texts[0])]
        answer = self._chat(self.prompt.batch_messages(report_texts))
        if answer.error is not None or answer.text is None:
            return [None] * len(report_texts)
        parts = split_batch_answer(answer.text, len(report_texts))
        share = max(1, sum(part is not None for part in parts))
        usage = Usage(answer.usage.prompt_tokens // share, answer.usage.completion_tokens // share)
        return [None if part is None else replace(answer, text=part, usage=usage) for part in parts]

    def repair(self, report_text: str, bad_answer: str, problem: str) -> Answer:
        """Ask once more, showing the model its unreadable answer and what was wrong with it."""
        messages = [*self.prompt.messages(report_text), {"role": "assistant", "content": bad_answer},
                    {"role": "user", "content": REPAIR_INSTRUCTION.format(problem=problem)}]
        return self._chat(messages)

    def _chat(self, messages: list[dict[str, str]]) -> Answer:
        started = time.perf_counter()
        request: dict[str, Any] = {"model": self.model, "messages": messages,
                                   "temperature": self.config.temperature,
                                   "max_tokens": self.config.max_tokens}
        if self.config.response_format == "json_object":
            request["response_format"] = {"type": "json_object"}
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
                return self._failed(f"{_describe(exc)}", attempt, started)
            self._record_attempt(None)
            return self._answer(response, attempt, started)
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
        prompt_price = self.config.price_prompt_per_1k
        completion_price = self.config.price_completion_per_1k
        if prompt_price is None and completion_price is None:
            return None
        return (usage.prompt_tokens * (prompt_price or 0.0)
                + usage.completion_tokens * (completion_price or 0.0)) / 1000.0

    def close(self) -> None:
        self._client.close()

    def _answer(self, response: Any, attempts: int, started: float) -> Answer:
        usage = Usage(getattr(response.usage, "prompt_tokens", 0) or 0,
                      getattr(response.usage, "completion_tokens", 0) or 0) if response.usage else Usage()
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        if not content:
            # Not cached: an empty completion is worth asking again next run.
            return Answer(None, usage, time.perf_counter() - started, response.model or self.model,
                          attempts, "empty completion")
        return Answer(content, usage, time.perf_counter() - started,
                      response.model or self.model, attempts)

    def _failed(self, error: str, attempts: int, started: float) -> Answer:
        return Answer(None, Usage(), time.perf_counter() - started, self.model, attempts, error)

    def _backoff_s(self, attempt: int, exc: Exception) -> float:
        cap = self.config.backoff_max_s
        delay = random.uniform(0, min(cap, self.config.backoff_base_s * 2 ** (attempt - 1)))
        retry_after = _retry_after_s(exc)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay


def _retry_after_s(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {text}" if text else "")
