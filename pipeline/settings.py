"""One data root for everything the pipeline writes, and the repo's plain-file folders.

`MEDFILIP_HOME` (default `./.medfilip`) holds the Parquet data, DuckDB caches, the Dagster
instance (`DAGSTER_HOME` inside it) and the MLflow store, so a user can move, back up or
delete one folder and nothing leaks elsewhere.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.paths import KNOWLEDGE_DIR, PROMPTS_DIR, REPO_ROOT  # noqa: F401  (re-exported for the CLI)
from common.storage import write_text

SALT_ENV = "MEDFILIP_PATIENT_SALT"

# The user's MLflow server, read once at import: mlflow.set_tracking_uri() writes this same
# variable, so reading it later would return whatever store the process used last.
USER_MLFLOW_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "")

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


@dataclass(frozen=True)
class Layout:
    """Paths under one MEDFILIP_HOME."""

    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def corpus(self) -> Path:
        return self.home / "corpus"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    def asset_dir(self, asset_name: str) -> Path:
        return self.data / asset_name


def medfilip_home() -> Path:
    """MEDFILIP_HOME, else `home:` of medfilip.yaml, else ./.medfilip (pipeline/config_file.py)."""
    from pipeline.config_file import home_and_source

    return home_and_source()[0]


def layout(home: Path | str | None = None) -> Layout:
    return Layout(Path(home).expanduser().resolve() if home else medfilip_home())


def prepare_home(home: Path | str | None = None, *, set_dagster_home: bool = True) -> Layout:
    """Create the data root and a telemetry-free Dagster instance config inside it."""
    lay = layout(home)
    for path in (lay.data, lay.cache, lay.dagster_home, lay.mlflow_artifacts):
        path.mkdir(parents=True, exist_ok=True)
    config = lay.dagster_home / "dagster.yaml"
    if not config.exists():
        write_text(config, _DAGSTER_YAML)
    if set_dagster_home:
        os.environ["DAGSTER_HOME"] = str(lay.dagster_home)
    return lay


def patient_salt(home: Path | str | None = None) -> bytes:
    """Secret salt for patient keys: from the environment, else a file created once (0600).

    Keys must be stable across runs (joins, splits by patient) yet not reversible by anyone
    who only holds the outputs, hence a per-installation secret rather than a plain hash.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path = layout(home).home / "secrets" / "patient_salt"
    if not path.exists():
        write_text(path, secrets.token_hex(32), mode=0o600)
    return path.read_text().strip().encode()
