"""`medfilip.yaml`: one settings file for a real archive, read by the CLI and the Dagster resources.

Where it is found, first match wins: `medfilip --config PATH`, the `MEDFILIP_CONFIG` variable,
`./medfilip.yaml` in the working folder. Every key is also an environment variable (listed in
SETTINGS), and a variable that is set wins over the file, so a deployment can override one value
without editing it. Relative paths in the file are relative to the file's folder.

The CLI exports the file it found as MEDFILIP_CONFIG, so `dagster dev`, its daemon and the runs
it launches (other processes, other working folders) read the same file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.errors import UserError

CONFIG_ENV = "MEDFILIP_CONFIG"
CONFIG_NAME = "medfilip.yaml"
DEFAULT_HOME = ".medfilip"

_PATH_KEYS = {"home", "archive.root", "archive.metadata_csv", "archive.report_root",
              "extractor.vocabulary_path", "extractor.prompt_dir"}


@dataclass(frozen=True)
class Setting:
    env: str
    parse: Callable[[Any], Any]
    help: str


def _text(value: Any) -> str:
    return str(value).strip()


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).lower()
        if text not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return text
    return parse


def _int(value: Any) -> int:
    return int(value)


def _float(value: Any) -> float:
    return float(value)


def _mapping(value: Any) -> dict:
    # The environment can only hold text: JSON there, a YAML mapping in the file.
    parsed = json.loads(value) if isinstance(value, str) else value
    if not isinstance(parsed, dict):
        raise ValueError(f"{value!r} is not a mapping (JSON object)")
    return parsed


# The extractor keys are the fields of extraction.config (checked there); the first seven keep the
# variable names the README has always documented.
_EXTRACTOR = {
    "backend": ("MEDFILIP_EXTRACTOR", _choice("rules", "openai"), "rules (offline) or openai (any OpenAI-compatible endpoint)"),
    "base_url": ("MEDFILIP_LLM_BASE_URL", _text, "the endpoint, e.g. http://host:8000/v1"),
    "model": ("MEDFILIP_LLM_MODEL", _text, "the LLM's model name"),
    "api_key_env": ("MEDFILIP_LLM_API_KEY_ENV", _text, "NAME of the variable holding the API key"),
    "prompt_dir": ("MEDFILIP_PROMPT_DIR", _text, "folder with system.md and user.md (openai backend)"),
    "concurrency": ("MEDFILIP_LLM_CONCURRENCY", _int, "requests in flight"),
    "reports_per_request": ("MEDFILIP_LLM_REPORTS_PER_REQUEST", _int, "reports sharing one request"),
    "vocabulary_path": ("MEDFILIP_RULES_VOCABULARY", _text, "vocabulary.yaml of the rules backend"),
    "temperature": ("MEDFILIP_LLM_TEMPERATURE", _float, "sampling temperature"),
    "max_tokens": ("MEDFILIP_LLM_MAX_TOKENS", _int, "answer length limit"),
    "response_format": ("MEDFILIP_LLM_RESPONSE_FORMAT", _choice("text", "json_object"), "text or json_object"),
    "timeout_s": ("MEDFILIP_LLM_TIMEOUT_S", _float, "seconds per request"),
    "max_attempts": ("MEDFILIP_LLM_MAX_ATTEMPTS", _int, "tries per report"),
}

SETTINGS: dict[str, Setting] = {
    "home": Setting("MEDFILIP_HOME", _text, "data root: Parquet, caches, Dagster instance, MLflow store"),
    "archive.root": Setting("MEDFILIP_ARCHIVE_ROOT", _text, "folder holding files/pNN/p<subject>/s<study>/..."),
    "archive.image_format": Setting("MEDFILIP_ARCHIVE_IMAGE_FORMAT", _choice("dicom", "jpg"),
                                    "dicom (MIMIC-CXR) or jpg (MIMIC-CXR-JPG)"),
    "archive.metadata_csv": Setting("MEDFILIP_ARCHIVE_METADATA_CSV", _text,
                                    "mimic-cxr-2.0.0-metadata.csv(.gz) for the jpg format"),
    "archive.report_root": Setting("MEDFILIP_ARCHIVE_REPORT_ROOT", _text, "a separate reports tree (default: root)"),
    **{f"extractor.{key}": Setting(env, parse, text) for key, (env, parse, text) in _EXTRACTOR.items()},
    "training.preset": Setting("MEDFILIP_TRAINING_PRESET", _text, "training.config PRESETS: demo or paper"),
    "training.overrides": Setting("MEDFILIP_TRAINING_OVERRIDES", _mapping, "TrainConfig fields, e.g. {epochs: 5}"),
    "training.launcher": Setting("MEDFILIP_TRAINING_LAUNCHER", _choice("in_process", "torchrun"),
                                 "in_process or torchrun"),
    "training.nproc_per_node": Setting("MEDFILIP_TRAINING_NPROC_PER_NODE", _int, "GPUs per node for torchrun"),
}


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    """The settings file in use: `explicit`, else $MEDFILIP_CONFIG, else ./medfilip.yaml, else None."""
    named = explicit or os.environ.get(CONFIG_ENV, "").strip()
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"settings file {path} does not exist",
                            f"create it (`medfilip init` writes one) or unset {CONFIG_ENV} / drop --config")
        return path
    local = Path.cwd() / CONFIG_NAME
    return local.resolve() if local.is_file() else None


def use_config_file(explicit: str | Path | None = None) -> Path | None:
    """Find the file and export it as MEDFILIP_CONFIG for the processes this one starts."""
    path = find_config_file(explicit)
    if path is not None:
        os.environ[CONFIG_ENV] = str(path)
    return path


_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def load_config_file(path: Path) -> dict[str, Any]:
    """The file's values by dotted key, parsed and with paths made absolute; a key that is not
    a setting, or a value that does not parse, is an error naming the key."""
    stamp = (str(path), path.stat().st_mtime)
    if stamp in _CACHE:
        return _CACHE[stamp]
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})",
                        "fix the file; `medfilip init --print` shows a valid one") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of settings", "see `medfilip init --print` for the format")
    values = {}
    for key, value in _flatten(raw).items():
        if key not in SETTINGS:
            raise UserError(f"{path}: unknown setting {key!r}",
                            f"use one of: {', '.join(SETTINGS)}")
        if value is None or value == "":
            continue
        values[key] = _parse(key, value, str(path))
        if key in _PATH_KEYS:
            values[key] = str((path.parent / Path(values[key]).expanduser()).resolve())
    _CACHE.clear()
    _CACHE[stamp] = values
    return values


def settings() -> dict[str, Any]:
    """Every setting that is set: the file's values with the environment's on top."""
    path = find_config_file()
    values = dict(load_config_file(path)) if path else {}
    for key, spec in SETTINGS.items():
        if os.environ.get(spec.env, "").strip():
            values[key] = _parse(key, os.environ[spec.env], f"${spec.env}")
    return values


def setting(key: str, default: Any = None) -> Any:
    return settings().get(key, default)


def section(prefix: str) -> dict[str, Any]:
    """The set values of one section (`archive`, `extractor`, `training`) by their short name."""
    return {key.split(".", 1)[1]: value for key, value in settings().items() if key.startswith(prefix + ".")}


def home_and_source() -> tuple[Path, str]:
    """The data root and where that choice came from, for the line the CLI prints."""
    if os.environ.get("MEDFILIP_HOME", "").strip():
        return Path(os.environ["MEDFILIP_HOME"]).expanduser().resolve(), "MEDFILIP_HOME"
    path = find_config_file()
    if path and "home" in load_config_file(path):
        return Path(load_config_file(path)["home"]), str(path)
    return Path(DEFAULT_HOME).resolve(), "default ./.medfilip"


def template(home: str = DEFAULT_HOME) -> str:
    """A commented medfilip.yaml: every setting with its environment variable."""
    lines = ["# medfilip settings. Each key is also an environment variable (shown), which wins over this file.",
             "# Relative paths are relative to this file's folder.",
             f"home: {home}    # {SETTINGS['home'].env}: {SETTINGS['home'].help}"]
    current = ""
    for key, spec in SETTINGS.items():
        if "." not in key:
            continue
        group, name = key.split(".", 1)
        if group != current:
            lines.append(f"# {group}:")
            current = group
        lines.append(f"#   {name}: ...    # {spec.env}: {spec.help}")
    return "\n".join(lines) + "\n"


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "training.overrides":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _parse(key: str, value: Any, where: str) -> Any:
    try:
        return SETTINGS[key].parse(value)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: setting {key} = {value!r} is invalid ({exc})",
                        f"{SETTINGS[key].help}") from exc
