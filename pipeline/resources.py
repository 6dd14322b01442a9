"""Resources: where data lives and where the archive is. Each is a ConfigurableResource so a
deployment swaps values (or a production variant) in one place: pipeline/definitions.py."""


from pathlib import Path
from typing import Optional

import dagster as dg

from pipeline.config_file import section, setting
from pipeline.settings import Layout, layout, patient_salt


class StorageResource(dg.ConfigurableResource):
    """The local data root. Empty `home` means MEDFILIP_HOME (default ./.medfilip)."""

    home: str = ""

    def layout(self) -> Layout:
        return layout(self.home or None)

    def asset_path(self, asset: str, *parts: str) -> Path:
        """Where an asset's file lives; writers create folders (atomically), readers never do."""
        return self.layout().asset_dir(asset).joinpath(*parts)

    def patient_salt(self) -> bytes:
        return patient_salt(self.home or None)


class ArchiveResource(dg.ConfigurableResource):
    """Where the chest X-ray archive is. A field left empty takes `archive:` of medfilip.yaml
    (or its MEDFILIP_ARCHIVE_* variable); with neither, the generated corpus in MEDFILIP_HOME.

    `image_format="jpg"` reads MIMIC-CXR-JPG (JPEG files + its metadata CSV) into the same
    schema as DICOM; `report_root` may point at a separate MIMIC-CXR reports tree.
    """

    root: str = ""
    report_root: str = ""
    image_format: str = ""  # "dicom" (default) or "jpg"
    metadata_csv: str = ""

    def image_root(self, storage: StorageResource) -> Path:
        root = self.root or setting("archive.root")
        return Path(root).expanduser() if root else storage.layout().corpus

    def reports_root(self, storage: StorageResource) -> Path:
        root = self.report_root or setting("archive.report_root")
        return Path(root).expanduser() if root else self.image_root(storage)

    def source_format(self) -> str:
        chosen = (self.image_format or setting("archive.image_format") or "dicom").lower()
        if chosen not in ("dicom", "jpg"):
            raise ValueError(f"archive image_format {chosen!r} is unknown: use dicom or jpg")
        return chosen

    def metadata_path(self) -> Path | None:
        csv = self.metadata_csv or setting("archive.metadata_csv")
        return Path(csv).expanduser() if csv else None


class ExtractorResource(dg.ConfigurableResource):
    """The GPT-IE backend. Default `rules`: offline, no report leaves the machine.

    `openai` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server);
    the API key is read from the environment variable *named* by `api_key_env`. Every field is
    a field of `extraction.config` (where its default and its check live); a field left unset
    takes the environment's value (MEDFILIP_EXTRACTOR, MEDFILIP_LLM_*), else `extractor:` of
    medfilip.yaml, so a run config that
    sets only `timeout_s` changes the timeout of the backend the environment chose.
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

    def backend_config(self):
        from extraction.config import backend_config_from_settings, settings_from_env

        explicit = {k: v for k, v in self.model_dump().items() if v is not None}
        return backend_config_from_settings({**section("extractor"), **settings_from_env(), **explicit})

    def make_backend(self):
        from extraction.backends import make_backend

        return make_backend(self.backend_config())

    def prompt_files(self) -> list[str]:
        """The files whose content is "the prompt" of the configured backend (its version's input)."""
        from extraction.prompts import default_prompt_dir
        from extraction.vocabulary import default_vocabulary_path

        config = self.backend_config()
        if config.kind == "rules":  # the rules' code and their vocabulary
            import extraction.rules

            return [str(config.vocabulary_path or default_vocabulary_path()), str(Path(extraction.rules.__file__))]
        folder = Path(config.prompt_dir or default_prompt_dir(config.response_format))
        return sorted(str(p) for p in folder.glob("*.md"))


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking: by default a SQLite store and artifact folder under MEDFILIP_HOME; any
    tracking server by `tracking_uri` (e.g. http://mlflow:5000 backed by PostgreSQL)."""

    tracking_uri: str = ""
    experiment: str = "medfilip"
    registered_model_name: str = "medfilip"
    ui_url: str = "http://127.0.0.1:5000"

    def activate(self, storage: StorageResource) -> str:
        """Point the mlflow client at the store and return the experiment id."""
        import mlflow

        from pipeline.quiet import quiet_mlflow
        from pipeline.settings import USER_MLFLOW_TRACKING_URI

        quiet_mlflow()
        lay = storage.layout()
        remote = self.tracking_uri or USER_MLFLOW_TRACKING_URI
        mlflow.set_tracking_uri(remote or lay.mlflow_tracking_uri)
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = None if remote else lay.mlflow_artifacts.as_uri()
        return mlflow.create_experiment(self.experiment, artifact_location=location)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"
