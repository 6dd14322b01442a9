"""The data root's layout: every path the pipeline writes lives under one folder (MEDFILIP_HOME).

A user can move, back up or delete that one folder and nothing leaks elsewhere: Parquet data,
DuckDB caches, the Dagster instance, the MLflow store and the patient salt all sit inside it.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from common.storage import write_text


@dataclass(frozen=True)
class Layout:
    """Paths under one data root."""

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
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def salt_file(self) -> Path:
        return self.home / "secrets" / "patient_salt"

    def asset_dir(self, asset_name: str) -> Path:
        return self.data / asset_name


def layout(home: Path | str) -> Layout:
    return Layout(Path(home).expanduser().resolve())


def salt_from_file(path: Path) -> bytes:
    """The installation's patient salt, created once (0600) on first use.

    Keys must be stable across runs (joins, splits by patient) yet not reversible by anyone who
    only holds the outputs, hence a per-installation secret rather than a plain hash."""
    if not path.exists():
        write_text(path, secrets.token_hex(32), mode=0o600)
    return path.read_text().strip().encode()
