"""What every extraction backend offers: ``complete(report_text) -> Answer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from extraction.parse import ParsedAnswer


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Answer:
    """One backend answer for one report. ``error`` is set (and ``text`` may be None) when the
    backend gave up; such answers are recorded but never cached as a success."""

    text: str | None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    model: str = ""
    attempts: int = 1
    error: str | None = None
    repaired: bool = False  # a repair request followed an unreadable first answer
    # Filled by the extraction run, once per fresh answer: the parse, and why the answer does
    # not follow the backend's answer schema (None: it does, or there is no schema).
    parsed: ParsedAnswer | None = field(default=None, compare=False, repr=False)
    schema_problem: str | None = None


class EndpointUnavailable(RuntimeError):
    """The backend's endpoint is down (the circuit breaker opened): stop the run, do not record
    every remaining report as failed. Answers committed so far stay cached."""


@runtime_checkable
class Backend(Protocol):
    name: str  # "rules", "openai"
    model: str
    params: dict[str, Any]  # everything besides the prompt that changes an answer
    version: str  # prompt hash (LLM) or rules+vocabulary hash (rules)
    concurrency: int  # how many reports may be in flight at once

    def complete(self, report_text: str) -> Answer: ...

    def cost_usd(self, usage: Usage) -> float | None: ...
