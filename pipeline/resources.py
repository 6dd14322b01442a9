"""Resources: where data lives and where the archive is. Each is a ConfigurableResource so a
deployment swaps values (or a production variant) in one place: pipeline/definitions.py."""


from pathlib import Path
from typing import Literal

import dagster as dg

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
    """Where the chest X-ray archive is. Empty paths mean the generated corpus in MEDFILIP_HOME.

    `image_format="jpg"` reads MIMIC-CXR-JPG (JPEG files + its metadata CSV) into the same
    schema as DICOM; `report_root` may point at a separate MIMIC-CXR reports tree.
    """

    root: str = ""
    report_root: str = ""
    image_format: Literal["dicom", "jpg"] = "dicom"
    metadata_csv: str = ""

    def image_root(self, storage: StorageResource) -> Path:
        return Path(self.root).expanduser() if self.root else storage.layout().corpus

    def reports_root(self, storage: StorageResource) -> Path:
        return Path(self.report_root).expanduser() if self.report_root else self.image_root(storage)

    def metadata_path(self) -> Path | None:
        return Path(self.metadata_csv).expanduser() if self.metadata_csv else None


class ExtractorResource(dg.ConfigurableResource):
    """The GPT-IE backend. Default `rules`: offline, no report leaves the machine.

    `openai` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp
    server); the API key is read from the environment variable *named* by `api_key_env`.
    """

    backend: Literal["rules", "openai"] = "rules"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    prompt_dir: str = ""
    response_format: Literal["text", "json_object"] = "text"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_attempts: int = 5
    price_prompt_per_1k: float | None = None
    price_completion_per_1k: float | None = None

    def backend_config(self) -> dict:
        if self.backend == "rules":
            return {"kind": "rules"}
        config = {
            "kind": "openai", "base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
            "response_format": self.response_format, "concurrency": self.concurrency,
            "timeout_s": self.timeout_s, "max_attempts": self.max_attempts,
            "price_prompt_per_1k": self.price_prompt_per_1k,
            "price_completion_per_1k": self.price_completion_per_1k,
        }
        if self.prompt_dir:
            config["prompt_dir"] = self.prompt_dir
        return config

    def make_backend(self):
        from extraction.backends import make_backend

        return make_backend(self.backend_config())


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

        from pipeline.settings import USER_MLFLOW_TRACKING_URI

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


def extractor_from_env() -> ExtractorResource:
    """The extractor for the code location. Default: rules, offline. An LLM endpoint is chosen
    without editing code (and the daemon and UI see the same choice) through:
    MEDFILIP_EXTRACTOR=openai, MEDFILIP_LLM_BASE_URL, MEDFILIP_LLM_MODEL, MEDFILIP_LLM_API_KEY_ENV,
    MEDFILIP_PROMPT_DIR, MEDFILIP_LLM_CONCURRENCY."""
    import os

    env = os.environ
    if env.get("MEDFILIP_EXTRACTOR", "rules") != "openai":
        return ExtractorResource()
    return ExtractorResource(
        backend="openai",
        base_url=env.get("MEDFILIP_LLM_BASE_URL", "http://127.0.0.1:8000/v1"),
        model=env.get("MEDFILIP_LLM_MODEL", ""),
        api_key_env=env.get("MEDFILIP_LLM_API_KEY_ENV", "OPENAI_API_KEY"),
        prompt_dir=env.get("MEDFILIP_PROMPT_DIR", ""),
        concurrency=int(env.get("MEDFILIP_LLM_CONCURRENCY", "8")),
    )
