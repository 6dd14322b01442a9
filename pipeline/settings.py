"""The one settings object: built once from `medfilip.yaml` and the environment, validated here.

Where the file is found, first match wins: `medfilip --config PATH`, the `MEDFILIP_CONFIG`
variable, `./medfilip.yaml` in the working folder. Every key is also an environment variable
(ENVIRONMENT below, the one table of variable names), and a variable that is set wins over the
file, so a deployment can override one value without editing it. Relative paths in the file are
relative to the file's folder.

`pipeline.definitions` builds the Dagster resources from a `Settings`; from then on a resource's
field is the only override (run config in the launchpad) and no resource method reads the
environment. Two exceptions, both secrets that must never sit in run config or the UI: the LLM
API key and the patient salt are read at call time from the variable the settings name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import UserError
from common.home import Layout
from common.home import layout as _layout_of
from common.storage import write_text

CONFIG_ENV = "MEDFILIP_CONFIG"
CONFIG_NAME = "medfilip.yaml"
DEFAULT_HOME = ".medfilip"
SALT_ENV = "MEDFILIP_PATIENT_SALT"
DAGSTER_HOME_ENV = "DAGSTER_HOME"

# The one table: setting key -> (environment variable, help). The first seven extractor keys keep
# the variable names the README has always documented.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "home": ("MEDFILIP_HOME", "data root: Parquet, caches, Dagster instance, MLflow store"),
    "archive.root": ("MEDFILIP_ARCHIVE_ROOT", "folder holding files/pNN/p<subject>/s<study>/..."),
    "archive.image_format": ("MEDFILIP_ARCHIVE_IMAGE_FORMAT", "dicom (MIMIC-CXR) or jpg (MIMIC-CXR-JPG)"),
    "archive.metadata_csv": ("MEDFILIP_ARCHIVE_METADATA_CSV", "mimic-cxr-2.0.0-metadata.csv(.gz) for the jpg format"),
    "archive.report_root": ("MEDFILIP_ARCHIVE_REPORT_ROOT", "a separate reports tree (default: root)"),
    "archive.colour": ("MEDFILIP_ARCHIVE_COLOUR", "colour images (RGB, YBR_*, PALETTE COLOR): quarantine "
                                                  "(default) or grey (ingested as luminance)"),
    "archive.id_rule": ("MEDFILIP_ARCHIVE_ID_RULE", "how dicom_id is made: auto (default: chosen on the archive's "
                                                    "first ingestion, then kept), stem, study_stem or sop_uid"),
    "archive.max_quarantine_rate": ("MEDFILIP_ARCHIVE_MAX_QUARANTINE_RATE",
                                    "share of a shard's files that may be quarantined before it fails (0.05)"),
    "archive.quarantine_rate_min_files": ("MEDFILIP_ARCHIVE_QUARANTINE_RATE_MIN_FILES",
                                          "a shard with fewer files fails the rate only when none is usable, "
                                          "else warns (20)"),
    "archive.max_image_pixels": ("MEDFILIP_ARCHIVE_MAX_IMAGE_PIXELS",
                                 "largest frame (Rows x Columns) decoded; a file claiming more is quarantined "
                                 "before any decoder allocates it (100000000)"),
    "extractor.backend": ("MEDFILIP_EXTRACTOR", "rules (offline) or openai (any OpenAI-compatible endpoint)"),
    "extractor.base_url": ("MEDFILIP_LLM_BASE_URL", "the endpoint, e.g. http://host:8000/v1"),
    "extractor.model": ("MEDFILIP_LLM_MODEL", "the LLM's model name"),
    "extractor.api_key_env": ("MEDFILIP_LLM_API_KEY_ENV", "NAME of the variable holding the API key"),
    "extractor.prompt_dir": ("MEDFILIP_PROMPT_DIR", "folder with system.md and user.md (openai backend)"),
    "extractor.concurrency": ("MEDFILIP_LLM_CONCURRENCY", "requests in flight"),
    "extractor.reports_per_request": ("MEDFILIP_LLM_REPORTS_PER_REQUEST", "reports sharing one request"),
    "extractor.vocabulary_path": ("MEDFILIP_RULES_VOCABULARY", "vocabulary.yaml of the rules backend"),
    "extractor.temperature": ("MEDFILIP_LLM_TEMPERATURE", "sampling temperature"),
    "extractor.max_tokens": ("MEDFILIP_LLM_MAX_TOKENS", "answer length limit"),
    "extractor.response_format": ("MEDFILIP_LLM_RESPONSE_FORMAT", "text or json_object"),
    "extractor.structured_output": ("MEDFILIP_LLM_STRUCTURED_OUTPUT",
                                    "the answer's JSON schema, in the server's dialect: none, json_schema "
                                    "(OpenAI, vLLM), llamacpp_schema (llama.cpp server) or guided_json (vLLM)"),
    "extractor.max_findings": ("MEDFILIP_LLM_MAX_FINDINGS", "the schema's maxItems: findings per report"),
    "extractor.mode": ("MEDFILIP_LLM_MODE", "online, batch (OpenAI Batch API) or offline_batch (vLLM run-batch)"),
    "extractor.context_tokens": ("MEDFILIP_LLM_CONTEXT_TOKENS",
                                 "the model's context window, where the server's /v1/models does not say"),
    "extractor.timeout_s": ("MEDFILIP_LLM_TIMEOUT_S", "seconds per request"),
    "extractor.max_attempts": ("MEDFILIP_LLM_MAX_ATTEMPTS", "tries per report"),
    "extractor.price_prompt_per_1k": ("MEDFILIP_LLM_PRICE_PROMPT_PER_1K", "USD per 1,000 prompt tokens (cost_usd)"),
    "extractor.price_completion_per_1k": ("MEDFILIP_LLM_PRICE_COMPLETION_PER_1K",
                                          "USD per 1,000 completion tokens (cost_usd)"),
    "extractor.batch_price_prompt_per_1k": ("MEDFILIP_LLM_BATCH_PRICE_PROMPT_PER_1K",
                                            "USD per 1,000 prompt tokens in batch mode"),
    "extractor.batch_price_completion_per_1k": ("MEDFILIP_LLM_BATCH_PRICE_COMPLETION_PER_1K",
                                                "USD per 1,000 completion tokens in batch mode"),
    "extractor.batch_poll_s": ("MEDFILIP_LLM_BATCH_POLL_S", "seconds between looks at a running batch"),
    "extractor.batch_wait_s": ("MEDFILIP_LLM_BATCH_WAIT_S",
                               "how long one run waits for a batch (a re-run resumes it)"),
    "training.preset": ("MEDFILIP_TRAINING_PRESET", "training.config PRESETS: demo, paper or reference"),
    "training.overrides": ("MEDFILIP_TRAINING_OVERRIDES", "TrainConfig fields, e.g. {epochs: 5}"),
    "training.launcher": ("MEDFILIP_TRAINING_LAUNCHER", "in_process or torchrun"),
    "training.nproc_per_node": ("MEDFILIP_TRAINING_NPROC_PER_NODE", "GPUs per node for torchrun"),
    "training.weights_dir": ("MEDFILIP_WEIGHTS", "folder where relative weight file names are looked up "
                                                 "(default ~/.cache/medfilip/weights)"),
    "mlflow.tracking_uri": ("MLFLOW_TRACKING_URI", "MLflow tracking server (default: a SQLite store in the data root)"),
}
_PATH_KEYS = {"home", "archive.root", "archive.metadata_csv", "archive.report_root",
              "extractor.vocabulary_path", "extractor.prompt_dir", "training.weights_dir"}
_MAPPING_KEYS = {"training.overrides"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveSettings(_Section):
    root: Optional[Path] = None  # None: the generated corpus inside the data root
    image_format: Literal["dicom", "jpg"] = "dicom"
    metadata_csv: Optional[Path] = None
    report_root: Optional[Path] = None
    colour: Literal["quarantine", "grey"] = "quarantine"
    id_rule: Literal["auto", "stem", "study_stem", "sop_uid"] = "auto"
    max_quarantine_rate: float = Field(0.05, ge=0, le=1)
    quarantine_rate_min_files: int = Field(20, ge=0)
    # ingestion.dicom_index.MAX_IMAGE_PIXELS, not imported: settings load without pydicom (the CLI's start)
    max_image_pixels: int = Field(100_000_000, ge=1)

    @field_validator("image_format", "colour", "id_rule", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        value = value.strip().lower() if isinstance(value, str) else value
        return "grey" if value == "gray" else value


class ExtractorSettings(_Section):
    """What the file and the environment set; defaults and cross-field checks live in
    extraction.config (the backend's own contract), applied when the resource builds it."""

    backend: Optional[Literal["rules", "openai"]] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = None
    prompt_dir: Optional[str] = None
    concurrency: Optional[int] = None
    reports_per_request: Optional[int] = None
    vocabulary_path: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    response_format: Optional[Literal["text", "json_object"]] = None
    structured_output: Optional[Literal["none", "json_schema", "llamacpp_schema", "guided_json"]] = None
    max_findings: Optional[int] = None
    mode: Optional[Literal["online", "batch", "offline_batch"]] = None
    context_tokens: Optional[int] = None
    timeout_s: Optional[float] = None
    max_attempts: Optional[int] = None
    price_prompt_per_1k: Optional[float] = None
    price_completion_per_1k: Optional[float] = None
    batch_price_prompt_per_1k: Optional[float] = None
    batch_price_completion_per_1k: Optional[float] = None
    batch_poll_s: Optional[float] = None
    batch_wait_s: Optional[float] = None

    @field_validator("backend", "response_format", "structured_output", "mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def set_values(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.model_dump().items() if v is not None}


class TrainingSettings(_Section):
    preset: str = "demo"
    overrides: dict[str, Any] = Field(default_factory=dict)
    launcher: Literal["in_process", "torchrun"] = "in_process"
    nproc_per_node: int = Field(1, ge=1)
    weights_dir: Optional[Path] = None


class MlflowSettings(_Section):
    tracking_uri: str = ""


class Settings(_Section):
    home: Path
    home_source: str  # "MEDFILIP_HOME", the settings file's path, or "default ./.medfilip"
    config_file: Optional[Path] = None
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    extractor: ExtractorSettings = Field(default_factory=ExtractorSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)

    @property
    def layout(self) -> Layout:
        return _layout_of(self.home)


def find_config_file(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings file in use: `explicit`, else $MEDFILIP_CONFIG, else ./medfilip.yaml, else None."""
    environ = os.environ if environ is None else environ
    named = explicit or environ.get(CONFIG_ENV, "").strip()
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"settings file {path} does not exist",
                            f"create it (`medfilip init` writes one) or unset {CONFIG_ENV} / drop --config")
        return path
    local = Path.cwd() / CONFIG_NAME
    return local.resolve() if local.is_file() else None


def use_config_file(explicit: str | Path | None = None) -> Path | None:
    """Find the file and export it as MEDFILIP_CONFIG, so that `dagster dev`, its daemon and the runs
    it launches (other processes, other working folders) read the same file."""
    path = find_config_file(explicit)
    if path is not None:
        os.environ[CONFIG_ENV] = str(path)
    return path


def load_settings(config: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings: the file's values with the environment's on top, validated; a key that is not a
    setting, or a value that does not parse, is one UserError naming the key, where it came from
    and the fix."""
    environ = os.environ if environ is None else environ
    path = find_config_file(config, environ)
    values: dict[str, tuple[Any, str]] = {key: (value, str(path)) for key, value in _file_values(path).items()} \
        if path else {}
    for key, (env, _) in ENVIRONMENT.items():
        if environ.get(env, "").strip():
            raw = environ[env].strip()
            values[key] = (_from_env_text(key, raw, env), f"${env}")
    tree: dict[str, Any] = {}
    for key, (value, _) in values.items():
        section, _, name = key.rpartition(".")
        (tree.setdefault(section, {}) if section else tree)[name] = value
    home_value, source = values.get("home", (None, ""))
    tree["home"] = Path(home_value).expanduser().resolve() if home_value else Path(DEFAULT_HOME).resolve()
    tree["home_source"] = ("MEDFILIP_HOME" if source.startswith("$") else source) if home_value \
        else f"default ./{DEFAULT_HOME}"
    tree["config_file"] = path
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        value, where = values.get(key, (None, "settings"))
        help_text = ENVIRONMENT.get(key, ("", "see `medfilip init --print`"))[1]
        raise UserError(f"{where}: setting {key} = {value!r} is invalid ({error['msg']})", help_text) from None


def _file_values(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})",
                        "fix the file; `medfilip init --print` shows a valid one") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of settings", "see `medfilip init --print` for the format")
    values = {}
    for key, value in _flatten(raw).items():
        if key not in ENVIRONMENT:
            raise UserError(f"{path}: unknown setting {key!r}", f"use one of: {', '.join(ENVIRONMENT)}")
        if value is None or value == "":
            continue
        if key in _MAPPING_KEYS and not isinstance(value, dict):
            raise UserError(f"{path}: setting {key} = {value!r} is invalid (not a mapping)", ENVIRONMENT[key][1])
        values[key] = str((path.parent / Path(str(value)).expanduser()).resolve()) if key in _PATH_KEYS else value
    return values


def _from_env_text(key: str, raw: str, env: str) -> Any:
    if key in _MAPPING_KEYS:  # the environment can only hold text: JSON there, a YAML mapping in the file
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"${env}: setting {key} = {raw!r} is invalid (not JSON: {exc.msg})",
                            ENVIRONMENT[key][1]) from None
        if not isinstance(parsed, dict):
            raise UserError(f"${env}: setting {key} = {raw!r} is invalid (not a mapping)", ENVIRONMENT[key][1])
        return parsed
    return str(Path(raw).expanduser().resolve()) if key in _PATH_KEYS else raw


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in _MAPPING_KEYS:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def template(home: str = DEFAULT_HOME) -> str:
    """A commented medfilip.yaml: every setting with its environment variable."""
    env, help_text = ENVIRONMENT["home"]
    lines = ["# medfilip settings. Each key is also an environment variable (shown), which wins over this file.",
             "# Relative paths are relative to this file's folder.",
             f"home: {home}    # {env}: {help_text}"]
    current = ""
    for key, (env, help_text) in ENVIRONMENT.items():
        if "." not in key:
            continue
        group, name = key.split(".", 1)
        if group != current:
            lines.append(f"# {group}:")
            current = group
        lines.append(f"#   {name}: ...    # {env}: {help_text}")
    return "\n".join(lines) + "\n"


def layout(home: Path | str | None = None) -> Layout:
    """The layout of `home`, else of the configured data root."""
    return _layout_of(home) if home else load_settings().layout


_DAGSTER_YAML = """\
# Written by medfilip; edit freely, it is not overwritten once present.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    # Training steps declare pool "gpu": two trainings never share one GPU by accident;
    # extraction declares "extraction_cache": a second extraction queues for the DuckDB cache.
    default_limit: 1
# A run whose worker died is marked failed and its pool slots freed (docs/operations.md).
# CLI runs are watched by dead_run_sensor and by every `medfilip` command (pipeline/run_health.py).
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 30
"""


def prepare_home(home: Path | str | None = None, *, set_dagster_home: bool = True) -> Layout:
    """Create the data root and a telemetry-free Dagster instance config inside it."""
    lay = layout(home)
    for path in (lay.data, lay.cache, lay.dagster_home, lay.mlflow_artifacts):
        path.mkdir(parents=True, exist_ok=True)
    config = lay.dagster_home / "dagster.yaml"
    if not config.exists():
        write_text(config, _DAGSTER_YAML)
    if set_dagster_home:
        os.environ[DAGSTER_HOME_ENV] = str(lay.dagster_home)
    return lay
