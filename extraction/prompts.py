"""Extraction prompts as plain files, and their version (a content hash).

A prompt is a folder with ``system.md`` and ``user.md``; ``user.md`` holds one ``{report}``
placeholder. The version hashes both files (name and bytes, in that fixed order), so any edit
gives a new version and therefore new cache keys: the next run re-asks every report.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from common.paths import PROMPTS_DIR

PROMPT_FILES = ("system.md", "user.md")
REPORT_PLACEHOLDER = "{report}"


class PromptError(ValueError):
    """A prompt folder is incomplete or its template is malformed."""


@dataclass(frozen=True)
class Prompt:
    system: str
    user_template: str
    version: str  # full sha256 hex of the prompt files
    directory: Path

    @property
    def short_version(self) -> str:
        return self.version[:12]

    def messages(self, report_text: str) -> list[dict[str, str]]:
        """Chat messages for one report: the instructions and the report, nothing else."""
        # str.replace, not str.format: prompts and reports both contain literal braces.
        user = self.user_template.replace(REPORT_PLACEHOLDER, report_text)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


    def batch_messages(self, report_texts: list[str], instruction: str | None = None) -> list[dict[str, str]]:
        """Chat messages for several reports at once: the same system prompt (a long stable
        prefix that providers' prompt caching serves), then the numbered reports."""
        numbered = "\n\n".join(f"Report {i}:\n{text}" for i, text in enumerate(report_texts, 1))
        user = (instruction or BATCH_INSTRUCTION).format(n=len(report_texts)) + "\n\n" + numbered + "\n\nAnswers:"
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


# Part of the backend's identity when reports_per_request > 1 (see OpenAIBackend.params).
BATCH_INSTRUCTION = ("Below are {n} reports, numbered. Treat each one alone, exactly as the instructions say for "
                     "one report. Answer for every report under a header line `Report N:` with its number, in "
                     "order, its findings' lines below the header (`none` when it has none).")
# The same with a schema: the answer is one JSON object holding each report's answer in order.
BATCH_JSON_INSTRUCTION = ("Below are {n} reports, numbered. Treat each one alone, exactly as the instructions say for "
                          "one report. Answer with one JSON object {{\"reports\": [...]}} whose list holds, in "
                          "order, one answer object per report ({n} in all).")
_BATCH_HEADER = re.compile(r"^[ \t>*#_]*report\s+(\d+)\s*[:.)\]-]*[ \t*_]*(.*)$", re.IGNORECASE | re.MULTILINE)


def split_batch_answer(answer: str, n: int) -> list[str | None]:
    """The part of a batched answer that belongs to each of the n reports, by its `Report N:`
    header; None where the number is missing, repeated or the part is empty, so that report is
    asked again alone rather than given another report's findings."""
    headers = list(_BATCH_HEADER.finditer(answer))
    parts: dict[int, list[str]] = {}
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(answer)
        body = (match.group(2) + "\n" + answer[match.end():end]).strip()
        parts.setdefault(int(match.group(1)), []).append(body)
    return [parts[i][0] if len(parts.get(i, [])) == 1 and parts[i][0] else None for i in range(1, n + 1)]


def default_prompt_dir(response_format: str = "text", structured_output: str = "none") -> Path:
    """The JSON prompt for json_object and for any schema; the braces prompt for plain text."""
    name = "gpt_ie_json" if response_format == "json_object" or structured_output != "none" else "gpt_ie"
    return PROMPTS_DIR / name


def load_prompt(directory: Path | str) -> Prompt:
    directory = Path(directory)
    contents: dict[str, bytes] = {}
    for name in PROMPT_FILES:
        path = directory / name
        if not path.is_file():
            raise PromptError(f"{directory}: missing prompt file '{name}'")
        contents[name] = path.read_bytes()
    user_template = contents["user.md"].decode("utf-8")
    if user_template.count(REPORT_PLACEHOLDER) != 1:
        raise PromptError(f"{directory / 'user.md'}: needs exactly one {REPORT_PLACEHOLDER} placeholder")
    return Prompt(
        system=contents["system.md"].decode("utf-8"),
        user_template=user_template,
        version=prompt_version(contents),
        directory=directory,
    )


def prompt_version(contents: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in PROMPT_FILES:
        # Name and length framing so moving text between files changes the hash.
        digest.update(f"{name}\0{len(contents[name])}\0".encode())
        digest.update(contents[name])
    return digest.hexdigest()
