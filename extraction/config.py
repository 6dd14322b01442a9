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
    # No default endpoint: reports must never go to a provider nobody named. Only offline_batch
    # (vLLM's run-batch, no server) goes without one.
    base_url: str | None = Field(default=None, min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key never sits in config
    prompt_dir: Path | None = None  # default: prompts/gpt_ie (gpt_ie_json for json_object or a schema)
    temperature: float = 0.0
    # Answer length limit per report. Unset: 512, or with a schema what its longest answer needs;
    # set with a schema, it also caps the schema's maxItems so that every answer can close.
    max_tokens: int | None = Field(default=None, gt=0)
    response_format: Literal["text", "json_object"] = "text"
    # The answer's JSON schema (extraction/schema.py), in the dialect the server speaks; it wins
    # over response_format. `none` sends response_format alone.
    structured_output: Literal["none", "json_schema", "llamacpp_schema", "guided_json"] = "none"
    max_findings: int = Field(default=12, ge=1, le=100)  # the schema's maxItems
    # online: one request per report (or per reports_per_request); batch: OpenAI's Batch API
    # (/v1/files, /v1/batches) at base_url; offline_batch: a JSONL file for vLLM's run-batch.
    mode: Literal["online", "batch", "offline_batch"] = "online"
    # The model's context window in tokens when the server does not say (GET /v1/models).
    context_tokens: int | None = Field(default=None, gt=0)
    batch_price_prompt_per_1k: float | None = Field(default=None, ge=0)
    batch_price_completion_per_1k: float | None = Field(default=None, ge=0)
    batch_poll_s: float = Field(default=30.0, gt=0)
    # How long one run waits for a batch before it stops (the batch goes on; a re-run resumes it).
    batch_wait_s: float = Field(default=86_400.0, gt=0)
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
    values = dict(config)
    kind = str(values.get("kind", "rules"))
    # The endpoint check sits beside pydantic's so that one line names every missing setting.
    endpoint = ([{"loc": ("base_url",), "type": "missing", "msg": ""}]
                if kind == "openai" and not values.get("base_url") and values.get("mode") != "offline_batch" else [])
    try:
        parsed = _CONFIG_ADAPTER.validate_python(values)
    except ValidationError as exc:
        raise ExtractorSettingError(_one_line(endpoint + exc.errors(), kind)) from None
    if endpoint:
        raise ExtractorSettingError(_one_line(endpoint, kind))
    if isinstance(parsed, OpenAIConfig) and parsed.mode != "online" and parsed.reports_per_request > 1:
        raise ExtractorSettingError(f"extractor (openai backend): reports_per_request {parsed.reports_per_request} "
                                    f"applies to mode online only; a batch file holds one report per request: "
                                    f"set extractor.reports_per_request to 1 or extractor.mode to online")
    return parsed


def _one_line(errors: list[Any], kind: str) -> str:
    problems = []
    for error in errors:
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
