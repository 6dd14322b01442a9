"""Backend configuration (validated once, at the edge) and the factory that builds one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from extraction.interface import Backend


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["rules"] = "rules"
    vocabulary_path: Path | None = None  # default: knowledge/vocabulary.yaml


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key never sits in config
    prompt_dir: Path | None = None  # default: prompts/gpt_ie (or gpt_ie_json for json_object)
    temperature: float = 0.0
    max_tokens: int = Field(default=512, gt=0)
    response_format: Literal["text", "json_object"] = "text"
    concurrency: int = Field(default=8, ge=1, le=256)
    timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    price_prompt_per_1k: float | None = Field(default=None, ge=0)
    price_completion_per_1k: float | None = Field(default=None, ge=0)


BackendConfig = Annotated[Union[RulesConfig, OpenAIConfig], Field(discriminator="kind")]
_CONFIG_ADAPTER: TypeAdapter[Any] = TypeAdapter(BackendConfig)


def parse_backend_config(config: Mapping[str, Any] | RulesConfig | OpenAIConfig) -> RulesConfig | OpenAIConfig:
    if isinstance(config, (RulesConfig, OpenAIConfig)):
        return config
    return _CONFIG_ADAPTER.validate_python(dict(config))


def make_backend(config: Mapping[str, Any] | RulesConfig | OpenAIConfig | None = None) -> Backend:
    """Build a backend from a config dict or model; ``None`` gives the offline rules default."""
    parsed = parse_backend_config(config or {"kind": "rules"})
    if isinstance(parsed, OpenAIConfig):
        from extraction.openai_backend import OpenAIBackend  # the client is only needed here
        return OpenAIBackend(parsed)
    from extraction.rules import RulesBackend
    return RulesBackend(parsed.vocabulary_path)
