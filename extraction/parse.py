"""Parse an extraction answer into findings, whatever shape the model chose.

Accepted shapes (see prompts/):
- the paper's braces, one finding per line: ``{severity}{location}{category}``, or the
  4-field variant ``{severity}{location}{category}{certainty}`` (certainty: certain|uncertain);
  bullets, numbering, several triplets on one line and ``none`` are tolerated;
- JSON: a list of objects or ``{"findings": [...]}``, objects with severity, location,
  category, optional certainty (or boolean ``uncertain``) and sentence;
- either wrapped in a markdown code fence.

Values are lower-cased and stripped here; vocabulary checks and synonym folding happen in
``to_triplets``. A malformed answer never raises: the problems come back as ``error``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

NOT_STATED = "na"
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_BRACE_GROUP = re.compile(r"(?:\{[^{}\n]*\}[ \t]*){2,}")
_BRACE_FIELD = re.compile(r"\{([^{}\n]*)\}")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|\(\d+\))\s*")
_NO_FINDINGS = {"none", "no findings", "no finding", "n/a", "na", "nil", "[]"}
_UNCERTAIN = {"uncertain", "possible", "probable", "likely", "unsure", "?", "questionable",
              "suspected", "equivocal", "maybe"}
_CERTAIN = {"certain", "definite", "sure", "", NOT_STATED, "confirmed", "present", "absent"}


@dataclass(frozen=True)
class ParsedFinding:
    severity: str
    location: str
    category: str
    uncertain: bool = False
    sentence: str | None = None


@dataclass(frozen=True)
class ParsedAnswer:
    findings: list[ParsedFinding]
    error: str | None = None
    form: str = "text"  # "json" when the answer was a JSON document (what a schema asks for)


def parse_answer(text: str | None) -> ParsedAnswer:
    try:
        return _parse(text)
    except Exception as exc:  # a parser bug must not kill a 200k-report run
        return ParsedAnswer([], f"parser failure: {type(exc).__name__}: {exc}")


def _parse(text: str | None) -> ParsedAnswer:
    if text is None or not text.strip():
        return ParsedAnswer([], "empty answer")
    body = _strip_fences(text).strip()
    if body.lower().strip(" .") in _NO_FINDINGS:
        return ParsedAnswer([])
    if body[:1] in "[{" and not _BRACE_GROUP.match(body):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            return ParsedAnswer([], f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return replace(_from_json(data), form="json")
    return _from_braces(body)


def _strip_fences(text: str) -> str:
    blocks = _FENCE.findall(text)
    return "\n".join(blocks) if blocks else text


def _from_braces(body: str) -> ParsedAnswer:
    findings: list[ParsedFinding] = []
    problems: list[str] = []
    for line in body.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        groups = _BRACE_GROUP.findall(line)
        if not groups and "{" in line:
            problems.append(f"unreadable line {line[:60]!r}")
        for group in groups:
            fields = _BRACE_FIELD.findall(group)
            finding, problem = _from_fields(fields)
            if finding:
                findings.append(finding)
            else:
                problems.append(f"{problem} in {group.strip()[:60]!r}")
    if not findings and not problems:
        return ParsedAnswer([], "no triplets found")
    return ParsedAnswer(findings, _summarise(problems, len(findings)))


def _from_fields(fields: list[str]) -> tuple[ParsedFinding | None, str]:
    if len(fields) not in (3, 4):
        return None, f"{len(fields)} fields (expected 3 or 4)"
    severity, location, category = (_clean(f) for f in fields[:3])
    if category == NOT_STATED:
        return None, "no category"
    uncertain = False
    if len(fields) == 4:
        certainty = _clean(fields[3])
        if certainty in _UNCERTAIN:
            uncertain = True
        elif certainty not in _CERTAIN:
            return None, f"unknown certainty {certainty!r}"
    return ParsedFinding(severity, location, category, uncertain), ""


def _from_json(data: Any) -> ParsedAnswer:
    if isinstance(data, dict):
        items = next((v for k, v in data.items() if str(k).lower() in ("findings", "triplets")), None)
        if items is None:
            return ParsedAnswer([], "JSON object without a 'findings' list")
    else:
        items = data
    if not isinstance(items, list):
        return ParsedAnswer([], f"'findings' is {type(items).__name__}, expected a list")
    findings: list[ParsedFinding] = []
    problems: list[str] = []
    for position, item in enumerate(items):
        finding, problem = _from_json_item(item)
        if finding:
            findings.append(finding)
        else:
            problems.append(f"item {position}: {problem}")
    return ParsedAnswer(findings, _summarise(problems, len(findings)))


def _from_json_item(item: Any) -> tuple[ParsedFinding | None, str]:
    if isinstance(item, str):
        fields = _BRACE_FIELD.findall(item)
        return _from_fields(fields) if fields else (None, f"not a finding: {item[:60]!r}")
    if isinstance(item, list):
        return _from_fields([str(v) for v in item])
    if not isinstance(item, dict):
        return None, f"expected an object, got {type(item).__name__}"
    fields = {str(k).lower(): v for k, v in item.items()}
    category = _clean(fields.get("category") or fields.get("finding"))
    if category == NOT_STATED:
        return None, "no category"
    uncertain = fields.get("uncertain")
    if not isinstance(uncertain, bool):
        certainty = _clean(fields.get("certainty"))
        if certainty not in _UNCERTAIN and certainty not in _CERTAIN:
            return None, f"unknown certainty {certainty!r}"
        uncertain = certainty in _UNCERTAIN
    sentence = fields.get("sentence") or fields.get("evidence")
    return ParsedFinding(
        severity=_clean(fields.get("severity")),
        location=_clean(fields.get("location")),
        category=category,
        uncertain=uncertain,
        sentence=str(sentence).strip() if sentence else None,
    ), ""


def _clean(value: Any) -> str:
    if value is None:
        return NOT_STATED
    text = " ".join(str(value).strip().strip("\"'`*").lower().split())
    return text or NOT_STATED


def _summarise(problems: list[str], n_good: int) -> str | None:
    if not problems:
        return None
    shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
    return f"{len(problems)} malformed item(s), {n_good} parsed: {shown}"
