"""Resources: where data lives, where the archive is, which extractor, which MLflow store.

Each is a ConfigurableResource whose fields `pipeline.definitions` fills from the one settings
object (medfilip.yaml + environment); a field set in run config is the only override, and no
method here reads the environment, except for the two secrets named by a field (`salt_env`,
`api_key_env`), read at call time so their values never sit in run config or the UI.
"""

import os
from pathlib import Path
from typing import Optional

import dagster as dg

from common.home import Layout, layout, salt_from_file
from ingestion.dicom_index import COLOUR_MODES, ID_RULES, MAX_IMAGE_PIXELS
from tracking.store import is_local_store, resolve_tracking_uri


class StorageResource(dg.ConfigurableResource):
    """The local data root; `home` empty means ./.medfilip in the working folder."""

    home: str = ""
    salt_env: str = "MEDFILIP_PATIENT_SALT"  # the NAME of the variable that may hold the patient salt
    weights_dir: str = ""  # where relative weight file names are looked up (medfilip_model.weights)

    def layout(self) -> Layout:
        return layout(self.home or ".medfilip")

    def asset_path(self, asset: str, *parts: str) -> Path:
        """Where an asset's file lives; writers create folders (atomically), readers never do."""
        return self.layout().asset_dir(asset).joinpath(*parts)

    def patient_salt(self) -> bytes:
        """The salt of patient keys: the variable `salt_env` names, else a file created once in the
        data root (0600)."""
        value = os.environ.get(self.salt_env, "") if self.salt_env else ""
        return value.encode() if value else salt_from_file(self.layout().salt_file)

    def weights_folder(self) -> Path | None:
        return Path(self.weights_dir).expanduser() if self.weights_dir else None


class ArchiveResource(dg.ConfigurableResource):
    """Where the chest X-ray archive is; `root` empty means the generated corpus in the data root.

    `image_format="jpg"` reads MIMIC-CXR-JPG (JPEG files + its metadata CSV) into the same
    schema as DICOM; `report_root` may point at a separate MIMIC-CXR reports tree. `colour`
    "grey" ingests colour images as luminance; `id_rule` "auto" takes the rule recorded with
    the instance on the archive's first ingestion (see assets.ingestion.archive_id_rule).
    """

    root: str = ""
    report_root: str = ""
    image_format: str = "dicom"  # "dicom" or "jpg"
    metadata_csv: str = ""
    colour: str = "quarantine"  # ingestion.dicom_index.COLOUR_MODES
    id_rule: str = "auto"  # "auto" or one of ingestion.dicom_index.ID_RULES
    max_quarantine_rate: float = 0.05  # above this share of quarantined files a shard fails
    quarantine_rate_min_files: int = 20  # below this many files, only a shard with no usable file fails
    max_image_pixels: int = MAX_IMAGE_PIXELS  # a larger frame (Rows x Columns) is quarantined, never decoded

    def image_root(self, storage: StorageResource) -> Path:
        return Path(self.root).expanduser() if self.root else storage.layout().corpus

    def reports_root(self, storage: StorageResource) -> Path:
        return Path(self.report_root).expanduser() if self.report_root else self.image_root(storage)

    def source_format(self) -> str:
        chosen = (self.image_format or "dicom").lower()
        if chosen not in ("dicom", "jpg"):
            raise ValueError(f"archive image_format {chosen!r} is unknown: use dicom or jpg")
        return chosen

    def colour_mode(self) -> str:
        chosen = (self.colour or "quarantine").lower()
        if chosen not in COLOUR_MODES:
            raise ValueError(f"archive colour {chosen!r} is unknown: use one of {', '.join(COLOUR_MODES)}")
        return chosen

    def configured_id_rule(self) -> str:
        chosen = (self.id_rule or "auto").lower()
        if chosen not in ("auto", *ID_RULES):
            raise ValueError(f"archive id_rule {chosen!r} is unknown: use auto or one of {', '.join(ID_RULES)}")
        return chosen

    def metadata_path(self) -> Path | None:
        return Path(self.metadata_csv).expanduser() if self.metadata_csv else None


class ExtractorResource(dg.ConfigurableResource):
    """The GPT-IE backend. Default `rules`: offline, no report leaves the machine.

    `openai` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server);
    the API key is read from the environment variable *named* by `api_key_env`. Every field is a
    field of `extraction.config` (where its default and its check live); a field left unset takes
    that default.
    """

    backend: Optional[str] = None  # "rules" or "openai"; checked by extraction.config
    vocabulary_path: Optional[str] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: Optional[str] = None
    prompt_dir: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    response_format: Optional[str] = None  # "text" or "json_object"
    concurrency: Optional[int] = None
    timeout_s: Optional[float] = None
    max_attempts: Optional[int] = None
    backoff_base_s: Optional[float] = None
    backoff_max_s: Optional[float] = None
    price_prompt_per_1k: Optional[float] = None
    price_completion_per_1k: Optional[float] = None
    max_report_chars: Optional[int] = None
    circuit_breaker_failures: Optional[int] = None
    reports_per_request: Optional[int] = None
    structured_output: Optional[str] = None  # none, json_schema, llamacpp_schema or guided_json
    max_findings: Optional[int] = None
    mode: Optional[str] = None  # online, batch or offline_batch
    context_tokens: Optional[int] = None
    batch_price_prompt_per_1k: Optional[float] = None
    batch_price_completion_per_1k: Optional[float] = None
    batch_poll_s: Optional[float] = None
    batch_wait_s: Optional[float] = None

    def backend_config(self):
        from extraction.config import backend_config_from_settings

        return backend_config_from_settings({k: v for k, v in self.model_dump().items() if v is not None})

    def make_backend(self):
        from extraction.backends import make_backend

        return make_backend(self.backend_config())

    def prompt_files(self) -> list[str]:
        """The files whose content is "the prompt" of the configured backend (its version's input)."""
        from extraction.backends import instruction_files

        return sorted(str(path) for path in instruction_files(self.backend_config()))

    def prompt_version(self) -> str:
        """The backend's version from its instruction files alone (16 hex): no client, no vocabulary."""
        from extraction.backends import instruction_version

        return instruction_version(self.backend_config())[:16]


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking: by default a SQLite store and artifact folder in the data root; any
    tracking server by `tracking_uri` (e.g. http://mlflow:5000 backed by PostgreSQL)."""

    tracking_uri: str = ""
    experiment: str = "medfilip"
    registered_model_name: str = "medfilip"
    ui_url: str = "http://127.0.0.1:5000"

    def uri(self, storage: StorageResource) -> str:
        return resolve_tracking_uri(self.tracking_uri, storage.layout().home)

    def activate(self, storage: StorageResource) -> str:
        """Point the mlflow client at the store and return the experiment id."""
        from tracking.store import ensure_experiment, use_tracking_uri

        uri = self.uri(storage)
        use_tracking_uri(uri)
        local = is_local_store(uri, storage.layout().home)
        return ensure_experiment(self.experiment, storage.layout().mlflow_artifacts.as_uri() if local else None)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


class TrainingResource(dg.ConfigurableResource):
    """How pre-training runs by default: preset, field overrides, launcher. The asset's own run
    config (PretrainConfig) goes on top of these."""

    preset: str = "demo"  # training.config.PRESETS: demo (CPU minutes), paper or reference (the published code)
    overrides: dict = {}  # TrainConfig fields, e.g. {"epochs": 5}
    launcher: str = "in_process"  # or torchrun
    nproc_per_node: int = 1
