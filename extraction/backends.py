"""The factory that builds an extraction backend from its configuration."""

from __future__ import annotations

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
