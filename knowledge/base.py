"""The IKI knowledge base: canonical category -> radiographic visual description.

The plain file (knowledge/descriptions.yaml) is edited by users; this module validates it once at
the edge and hands the rest of the pipeline a typed, hashable object.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.paths import KNOWLEDGE_DIR

NO_FINDING = "no finding"
DEFAULT_KNOWLEDGE_PATH = KNOWLEDGE_DIR / "descriptions.yaml"

KNOWLEDGE_SCHEMA = pa.schema(
    [
        pa.field("category", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=False),
        pa.field("attributes", pa.string(), nullable=False),  # canonical JSON object
        pa.field("digest", pa.string(), nullable=False),  # sha256 of this entry
    ]
)


class CategoryKnowledge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1)
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("description")
    @classmethod
    def _collapse_whitespace(cls, value: str) -> str:
        text = " ".join(value.split())
        if not text:
            raise ValueError("description is empty")
        return text

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes_as_strings(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"attributes must be a mapping, got {type(value).__name__}")
        return {str(key).strip(): str(val).strip() for key, val in value.items()}


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    categories: dict[str, CategoryKnowledge]

    @field_validator("categories", mode="before")
    @classmethod
    def _canonical_names(cls, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            raise ValueError("categories must be a non-empty mapping of category -> entry")
        names: dict[str, Any] = {}
        for raw_name, entry in value.items():
            name = canonical_category(str(raw_name))
            if not name:
                raise ValueError(f"empty category name {raw_name!r}")
            if name in names:
                raise ValueError(f"category {name!r} is listed twice (after lower-casing)")
            names[name] = entry
        return names

    def description(self, category: str) -> str:
        """The visual description of a category; KeyError names the category if it is missing."""
        name = canonical_category(category)
        if name not in self.categories:
            raise KeyError(f"no description for category {name!r} in the knowledge base")
        return self.categories[name].description

    @property
    def digest(self) -> str:
        """sha256 over the canonical content: formatting and comments of the YAML do not count."""
        return _sha256_json(self.model_dump(mode="json"))

    def to_arrow(self) -> pa.Table:
        """One row per category, sorted by name, with a per-entry digest for lineage."""
        rows = [
            {
                "category": name,
                "description": entry.description,
                "attributes": json.dumps(entry.attributes, sort_keys=True),
                "digest": _sha256_json({"category": name, **entry.model_dump(mode="json")}),
            }
            for name, entry in sorted(self.categories.items())
        ]
        return pa.Table.from_pylist(rows, schema=KNOWLEDGE_SCHEMA)


def load_knowledge(path: str | Path = DEFAULT_KNOWLEDGE_PATH) -> KnowledgeBase:
    """Read and validate a descriptions YAML file; errors name the file and the offending entry."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with a 'categories' key")
    try:
        return KnowledgeBase.model_validate(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: invalid knowledge base: {exc}") from exc


def category_prompt(kb: KnowledgeBase, category: str) -> str:
    """The zero-shot prompt of a category: "<category>. <description>" (the paper's wording)."""
    name = canonical_category(category)
    return f"{name}. {kb.description(name)}"


def category_prompts(kb: KnowledgeBase, categories: Iterable[str]) -> dict[str, str]:
    """category -> its prompt, in the given order, for the categories the knowledge base describes."""
    return {c: category_prompt(kb, c) for c in categories if canonical_category(c) in kb.categories}


def missing_descriptions(kb: KnowledgeBase, categories: Iterable[str]) -> list[str]:
    """Categories (canonical, sorted, unique) that the knowledge base does not describe."""
    return sorted({canonical_category(c) for c in categories} - set(kb.categories))


def canonical_category(name: str) -> str:
    """Lower-case with single spaces: the form categories take everywhere downstream."""
    return " ".join(name.lower().split())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML otherwise keeps the last one silently."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
