"""Extraction prompts as plain files, and their version (a content hash).

A prompt is a folder with ``system.md`` and ``user.md``; ``user.md`` holds one ``{report}``
placeholder. The version hashes both files (name and bytes, in that fixed order), so any edit
gives a new version and therefore new cache keys: the next run re-asks every report.
"""

from __future__ import annotations

import hashlib
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


def default_prompt_dir(response_format: str = "text") -> Path:
    name = "gpt_ie_json" if response_format == "json_object" else "gpt_ie"
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
