"""The extraction vocabulary: canonical categories, severities and locations with synonyms.

The vocabulary is a plain YAML file users edit (``knowledge/vocabulary.yaml``). Loading
validates it once; folding maps any surface form an LLM or the rules write
("Pleural Effusions", "left-sided", "mildly") onto one canonical name, or ``None`` when
the form is not in the vocabulary (the triplet is then rejected, not guessed).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.paths import KNOWLEDGE_DIR

NOT_STATED = "na"
NEGATED_SEVERITY = "no"


class VocabularyError(ValueError):
    """The vocabulary file is malformed; the message names the file, section and entry."""


@dataclass(frozen=True)
class CategoryStates:
    """Organ + condition phrasing of a category ("heart is enlarged" / "heart size is normal")."""

    subjects: tuple[str, ...]
    abnormal: tuple[str, ...]
    normal: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    categories: dict[str, str]  # normalised phrase -> canonical category
    severities: dict[str, str]  # normalised phrase -> canonical severity (extent words)
    change_descriptors: dict[str, str]  # accepted in the severity slot, never emitted by rules
    locations: dict[str, str]
    states: dict[str, CategoryStates] = field(default_factory=dict)
    masked_phrases: tuple[str, ...] = ()
    path: Path | None = None
    sha256: str = ""

    @property
    def category_names(self) -> list[str]:
        return sorted(set(self.categories.values()))

    @property
    def severity_names(self) -> list[str]:
        return sorted(set(self.severities.values()) | set(self.change_descriptors.values()))

    @property
    def location_names(self) -> list[str]:
        return sorted(set(self.locations.values()))

    def fold_category(self, text: str | None) -> str | None:
        return _fold(text, self.categories)

    def fold_severity(self, text: str | None) -> str | None:
        if _is_not_stated(text):
            return NOT_STATED
        return _fold(text, self.severities) or _fold(text, self.change_descriptors)

    def fold_location(self, text: str | None) -> str | None:
        if _is_not_stated(text):
            return NOT_STATED
        return _fold(text, self.locations)


def default_vocabulary_path() -> Path:
    return KNOWLEDGE_DIR / "vocabulary.yaml"


def load_vocabulary(path: Path | str | None = None) -> Vocabulary:
    """Read and validate a vocabulary YAML file."""
    path = Path(path) if path is not None else default_vocabulary_path()
    raw_bytes = path.read_bytes()
    try:
        data = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: expected a mapping at top level")
    for section in ("categories", "severities", "locations"):
        if not isinstance(data.get(section), dict) or not data[section]:
            raise VocabularyError(f"{path}: section '{section}' is missing or empty")

    category_synonyms: dict[str, list[str]] = {}
    states: dict[str, CategoryStates] = {}
    for name, entry in data["categories"].items():
        if not isinstance(entry, dict):
            raise VocabularyError(f"{path}: categories.{name}: expected a mapping with 'synonyms'")
        category_synonyms[name] = _phrase_list(path, f"categories.{name}.synonyms",
                                               entry.get("synonyms", []))
        if "states" in entry:
            states[normalize_phrase(name)] = _states(path, name, entry["states"])

    return Vocabulary(
        categories=_synonym_index(path, "categories", category_synonyms),
        severities=_synonym_index(path, "severities", _section(path, data, "severities")),
        change_descriptors=_synonym_index(
            path, "change_descriptors", _section(path, data, "change_descriptors")),
        locations=_synonym_index(path, "locations", _section(path, data, "locations")),
        states=states,
        masked_phrases=tuple(normalize_phrase(p) for p in
                             _phrase_list(path, "masked_phrases", data.get("masked_phrases", []))),
        path=path,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
    )


def normalize_phrase(text: str) -> str:
    """Lower-case, hyphens/underscores as spaces, no punctuation, single spaces, no leading article."""
    text = text.lower().replace("-", " ").replace("_", " ")
    text = re.sub(r"[^a-z0-9/ ]+", " ", text)
    words = text.split()
    while words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def singular_forms(phrase: str) -> list[str]:
    """Candidate singulars of a phrase's last word (effusions, pneumothoraces, opacities)."""
    head, _, last = phrase.rpartition(" ")
    prefix = head + " " if head else ""
    candidates = []
    if last.endswith("ies"):
        candidates.append(last[:-3] + "y")
    if last.endswith("ces"):
        candidates.append(last[:-3] + "x")
    if last.endswith("es"):
        candidates.append(last[:-2])
    if last.endswith("s") and not last.endswith("ss"):
        candidates.append(last[:-1])
    return [prefix + c for c in candidates if c]


def plural_forms(phrase: str) -> list[str]:
    """Plurals of a phrase's last word, so the rules find "effusions" from "effusion"."""
    head, _, last = phrase.rpartition(" ")
    prefix = head + " " if head else ""
    if last.endswith("x"):
        forms = [last[:-1] + "ces", last + "es"]
    elif last.endswith("y") and len(last) > 2 and last[-2] not in "aeiou":
        forms = [last[:-1] + "ies"]
    elif last.endswith(("s", "sh", "ch")):
        forms = [last + "es"]
    else:
        forms = [last + "s"]
    return [prefix + f for f in forms]


def _fold(text: str | None, index: dict[str, str]) -> str | None:
    if text is None:
        return None
    phrase = normalize_phrase(text)
    if phrase in index:
        return index[phrase]
    for candidate in singular_forms(phrase):
        if candidate in index:
            return index[candidate]
    return None


def _is_not_stated(text: str | None) -> bool:
    return text is None or normalize_phrase(text) in ("na", "n/a", "none stated", "not stated", "")


def _section(path: Path, data: dict[str, Any], section: str) -> dict[str, list[str]]:
    raw = data.get(section) or {}
    if not isinstance(raw, dict):
        raise VocabularyError(f"{path}: section '{section}' must map canonical names to lists")
    return {str(name): _phrase_list(path, f"{section}.{name}", syns) for name, syns in raw.items()}


def _phrase_list(path: Path, where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise VocabularyError(f"{path}: {where}: expected a list of phrases, got {value!r}")
    return [str(v) for v in value]


def _states(path: Path, name: str, raw: Any) -> CategoryStates:
    if not isinstance(raw, dict):
        raise VocabularyError(f"{path}: categories.{name}.states: expected a mapping")
    lists = {}
    for key in ("subjects", "abnormal", "normal"):
        phrases = _phrase_list(path, f"categories.{name}.states.{key}", raw.get(key))
        if not phrases and key != "normal":  # a subject may have no normal state ("fluid")
            raise VocabularyError(f"{path}: categories.{name}.states.{key} is missing or empty")
        lists[key] = tuple(normalize_phrase(p) for p in phrases)
    return CategoryStates(**lists)


def _synonym_index(path: Path, section: str, groups: dict[str, list[str]]) -> dict[str, str]:
    """phrase -> canonical; the canonical name is its own synonym. One phrase, one meaning."""
    index: dict[str, str] = {}
    for name, synonyms in groups.items():
        canonical = normalize_phrase(name)
        if not canonical or canonical == NOT_STATED:
            raise VocabularyError(f"{path}: {section}: '{name}' is not a usable canonical name")
        for phrase in [name, *synonyms]:
            key = normalize_phrase(phrase)
            if not key:
                continue
            owner = index.get(key)
            if owner is not None and owner != canonical:
                raise VocabularyError(
                    f"{path}: {section}: '{phrase}' is a synonym of both '{owner}' and '{canonical}'")
            index[key] = canonical
    return index
