"""The factory that builds an extraction backend from its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from extraction.config import OpenAIConfig, RulesConfig, parse_backend_config
from extraction.interface import Backend


def make_backend(config: Mapping[str, Any] | RulesConfig | OpenAIConfig | None = None) -> Backend:
    """Build a backend from a config dict or model; ``None`` gives the offline rules default."""
    parsed = parse_backend_config(config or {"kind": "rules"})
    if isinstance(parsed, OpenAIConfig):
        from extraction.openai_backend import (
            OpenAIBackend,  # the client is only needed here
        )
        return OpenAIBackend(parsed)
    from extraction.rules import RulesBackend
    return RulesBackend(parsed.vocabulary_path)


def instruction_files(config: RulesConfig | OpenAIConfig) -> list[Path]:
    """The files whose content is "the prompt" of a backend: system.md and user.md of its prompt
    folder, or for the rules backend its vocabulary and the rules' code."""
    if isinstance(config, RulesConfig):
        from extraction import rules
        from extraction.vocabulary import default_vocabulary_path

        return [Path(config.vocabulary_path or default_vocabulary_path()), Path(rules.__file__)]
    from extraction.prompts import PROMPT_FILES, default_prompt_dir

    folder = Path(config.prompt_dir or default_prompt_dir(config.response_format, config.structured_output))
    files = [folder / name for name in PROMPT_FILES]
    if config.structured_output != "none":  # the answer schema is generated from the vocabulary
        from extraction.vocabulary import default_vocabulary_path

        files.append(default_vocabulary_path())
    return files


def instruction_version(config: RulesConfig | OpenAIConfig) -> str:
    """The backend's `version` computed from its instruction files alone: no client created, so a
    sensor can afford it on every tick (with a schema, the vocabulary is read to build it).
    Equal to `make_backend(config).version`."""
    import hashlib

    if isinstance(config, RulesConfig):
        from extraction.rules import rules_version_of

        vocabulary = instruction_files(config)[0]
        return rules_version_of(hashlib.sha256(vocabulary.read_bytes()).hexdigest())
    from extraction.prompts import load_prompt
    from extraction.schema import configured_schema, versioned

    schema = configured_schema(config.structured_output, config.max_findings, config.max_tokens)
    return versioned(load_prompt(instruction_files(config)[0].parent).version, schema)
