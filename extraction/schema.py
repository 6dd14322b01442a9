"""Structured outputs: the answer's JSON schema, generated from the vocabulary, and how each kind
of server wants to be sent it.

The schema is the shape `parse.py` reads (``{"findings": [{severity, location, category,
certainty, sentence}]}``) with category, severity and location as enums of the vocabulary's
canonical names (plus ``na`` where "not stated" is allowed), every field required and nothing
else allowed (OpenAI's strict mode demands both). ``maxItems`` and the sentence's ``maxLength``
bound the answer's length, so ``tokens_to_close`` can give a ``max_tokens`` within which even a
small model closes its JSON.

Dialects (the ``structured_output`` setting):
- ``json_schema``: OpenAI and vLLM, ``response_format: {"type": "json_schema", "json_schema": {..., "strict": true}}``
  (without ``maxLength``, outside OpenAI's strict subset: the sentence's bound is then the prompt's);
- ``llamacpp_schema``: llama.cpp's server, ``response_format: {"type": "json_object", "schema": ...}``
  (it refuses ``json_schema`` with a 422);
- ``guided_json``: vLLM's own request field ``guided_json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from extraction.parse import NOT_STATED, ParsedAnswer
from extraction.vocabulary import Vocabulary

DIALECTS = ("none", "json_schema", "llamacpp_schema", "guided_json")
SENTENCE_MAX_CHARS = 160
# A bound on answer length in tokens from its length in characters. BPE tokenizers give 3-4
# characters per token on English and on JSON keys; 2.5 leaves a margin for odd words.
CHARS_PER_TOKEN_FLOOR = 2.5
SCHEMA_NAME = "findings"


@dataclass(frozen=True)
class AnswerSchema:
    """The schema of one report's answer, and what a followed answer may contain."""

    schema: dict[str, Any]
    categories: frozenset[str]
    severities: frozenset[str]
    locations: frozenset[str]
    max_findings: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.schema).encode()).hexdigest()

    def for_reports(self, n: int) -> dict[str, Any]:
        """The schema of one request answering n numbered reports: one answer per report, in order."""
        if n == 1:
            return self.schema
        return {"type": "object", "additionalProperties": False, "required": ["reports"],
                "properties": {"reports": {"type": "array", "minItems": n, "maxItems": n, "items": self.schema}}}

    def tokens_to_close(self, n_reports: int = 1) -> int:
        """max_tokens within which the longest answer the schema allows is finished."""
        per_report = math.ceil(len(_canonical(self._longest_answer())) / CHARS_PER_TOKEN_FLOOR)
        return n_reports * per_report + 16 * n_reports  # + the batch wrapper and the end of turn

    def problem(self, parsed: ParsedAnswer) -> str | None:
        """Why a parsed answer does not follow the schema, or None when it does."""
        if parsed.error is not None:
            return f"not the schema's shape ({parsed.error[:80]})"
        if parsed.form != "json":
            return "not a JSON document"
        if len(parsed.findings) > self.max_findings:
            return f"{len(parsed.findings)} findings > maxItems {self.max_findings}"
        for finding in parsed.findings:
            for field, value, allowed in (("category", finding.category, self.categories),
                                          ("severity", finding.severity, self.severities),
                                          ("location", finding.location, self.locations)):
                if value not in allowed:
                    return f"{field} {value!r} is not one of the schema's values"
            if finding.sentence is None:
                return "a finding without its sentence"
        return None

    def _longest_answer(self) -> dict[str, Any]:
        longest = {name: max(values, key=len) for name, values in
                   (("severity", self.severities), ("location", self.locations), ("category", self.categories))}
        item = {**longest, "certainty": "uncertain", "sentence": "x" * SENTENCE_MAX_CHARS}
        return {"findings": [item] * self.max_findings}


def answer_schema(vocab: Vocabulary, max_findings: int) -> AnswerSchema:
    severities = [NOT_STATED, *vocab.severity_names]
    locations = [NOT_STATED, *vocab.location_names]
    categories = vocab.category_names
    item = {
        "type": "object", "additionalProperties": False,
        "required": ["severity", "location", "category", "certainty", "sentence"],
        "properties": {
            "severity": {"type": "string", "enum": severities},
            "location": {"type": "string", "enum": locations},
            "category": {"type": "string", "enum": categories},
            "certainty": {"type": "string", "enum": ["certain", "uncertain"]},
            "sentence": {"type": "string", "maxLength": SENTENCE_MAX_CHARS},
        },
    }
    schema = {"type": "object", "additionalProperties": False, "required": ["findings"],
              "properties": {"findings": {"type": "array", "maxItems": max_findings, "items": item}}}
    return AnswerSchema(schema, frozenset(categories), frozenset(severities), frozenset(locations), max_findings)


def request_fields(dialect: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request fields that ask this dialect's server to follow `schema`
    (`extra_body` is the openai client's way to send a field it does not know)."""
    if dialect == "json_schema":  # OpenAI's strict subset has maxItems but no maxLength
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": SCHEMA_NAME, "strict": True, "schema": _without(schema, "maxLength")}}}
    if dialect == "llamacpp_schema":
        return {"response_format": {"type": "json_object", "schema": schema}}
    if dialect == "guided_json":
        return {"extra_body": {"guided_json": schema}}
    raise ValueError(f"structured_output {dialect!r} is unknown: use one of {', '.join(DIALECTS)}")


def split_json_batch(text: str, n: int) -> list[str | None]:
    """Each report's answer of a schema-shaped batched answer ``{"reports": [...]}``, as JSON
    text; all None when the list is missing or has another length (each report is then asked alone)."""
    try:
        reports = json.loads(text).get("reports")
    except (json.JSONDecodeError, AttributeError):
        return [None] * n
    if not isinstance(reports, list) or len(reports) != n:
        return [None] * n
    return [json.dumps(item) if isinstance(item, dict) else None for item in reports]


def _without(value: Any, keyword: str) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keyword) for k, v in value.items() if k != keyword}
    if isinstance(value, list):
        return [_without(v, keyword) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def configured_schema(structured_output: str, max_findings: int, max_tokens: int | None,
                      vocab: Vocabulary | None = None) -> AnswerSchema | None:
    """The schema a backend with these settings sends, or None without structured outputs. An
    explicit max_tokens caps maxItems so that the longest allowed answer still closes in it."""
    if structured_output == "none":
        return None
    if vocab is None:
        from extraction.vocabulary import load_vocabulary

        vocab = load_vocabulary()
    for items in range(max_findings, 0, -1):
        schema = answer_schema(vocab, items)
        if max_tokens is None or schema.tokens_to_close() <= max_tokens:
            return schema
    raise ValueError(f"max_tokens {max_tokens} cannot hold even one finding of the answer schema (needs "
                     f"{answer_schema(vocab, 1).tokens_to_close()}): raise extractor.max_tokens or unset it")


def versioned(prompt_version: str, schema: AnswerSchema | None) -> str:
    """The backend's version: the prompt files' hash, and with a schema also the schema's digest
    (a new category in the vocabulary changes the schema, so every answer is asked again)."""
    if schema is None:
        return prompt_version
    return hashlib.sha256(f"{prompt_version}\0schema\0{schema.digest}".encode()).hexdigest()
