"""Backend configuration, validated once at the edge: the one home of every extractor field's
default and check (the settings file, the environment and the Dagster resource only fill them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["rules"] = "rules"
    vocabulary_path: Path | None = None  # default: knowledge/vocabulary.yaml


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    # No default endpoint: reports must never go to a provider nobody named.
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
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
    # Characters of report text sent per request; the rest is recorded as truncated. Real reports
    # are < 5k characters; a 2 MB file is a mistake that must not become a 2 MB request.
    max_report_chars: int = Field(default=20_000, gt=0)
    # Calls in a row that fail after their retries before the run stops: a dead endpoint ends the
    # run within about a minute instead of retrying every report.
    circuit_breaker_failures: int = Field(default=8, ge=1)
    # Reports sent in one request (numbered; answers matched back by number). The instruction is
    # then sent once per K reports instead of once per report; 1 keeps one report per request.
    reports_per_request: int = Field(default=1, ge=1, le=50)


BackendConfig = Annotated[Union[RulesConfig, OpenAIConfig], Field(discriminator="kind")]
_CONFIG_ADAPTER: TypeAdapter[Any] = TypeAdapter(BackendConfig)


class ExtractorSettingError(ValueError):
    """A setting that cannot work; the message is one line naming the setting and the fix."""


def parse_backend_config(config: Mapping[str, Any] | RulesConfig | OpenAIConfig) -> RulesConfig | OpenAIConfig:
    if isinstance(config, (RulesConfig, OpenAIConfig)):
        return config
    try:
        return _CONFIG_ADAPTER.validate_python(dict(config))
    except ValidationError as exc:
        raise ExtractorSettingError(_one_line(exc, str(dict(config).get("kind", "rules")))) from None


def _one_line(exc: ValidationError, kind: str) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"] if part not in ("rules", "openai"))
        where = f"extractor.{field} in medfilip.yaml, or resources.extractor.config.{field}"
        what = "is required" if error["type"] == "missing" else error["msg"].lower()
        problems.append(f"{field} {what} (set {where})")
    return f"extractor ({kind} backend): " + "; ".join(problems)


def backend_config_from_settings(settings: Mapping[str, Any]) -> RulesConfig | OpenAIConfig:
    """Settings by field name (as the resource gives them) -> a validated config.
    A setting that the chosen backend does not have is an error, never silently dropped."""
    values = dict(settings)
    kind = values.pop("backend", None) or "rules"
    if kind not in ("rules", "openai"):
        raise ExtractorSettingError(f"extractor backend {kind!r} is unknown: use 'rules' or 'openai'")
    model = RulesConfig if kind == "rules" else OpenAIConfig
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise ExtractorSettingError(f"extractor setting(s) {', '.join(unknown)} only apply to another backend, but the "
                         f"backend is {kind!r}: set extractor.backend to the one you mean")
    return parse_backend_config({"kind": kind, **values})
