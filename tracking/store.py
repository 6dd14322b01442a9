"""Which MLflow store a process talks to: the one fallback rule, and switching to it safely."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from common.home import layout

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DAGSTER_RUN_TAG = "dagster.run_id"  # set on every MLflow run an asset starts
DAGSTER_ASSET_TAG = "dagster.asset_key"


def resolve_tracking_uri(configured: str | None, home: Path | str) -> str:
    """The store: the configured URI (a server, e.g. http://mlflow:5000), else a SQLite store in
    the data root. The only place that fallback is written."""
    return configured or f"sqlite:///{layout(home).mlflow_db}"


def is_local_store(uri: str, home: Path | str) -> bool:
    return uri == resolve_tracking_uri(None, home)


def use_tracking_uri(uri: str) -> None:
    """Point the mlflow client of this process at `uri`.

    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ; that variable is a
    user setting here, so it is put back: otherwise the next settings read in this process would
    take the last store used for the user's own server."""
    import mlflow

    from tracking.quiet import quiet_mlflow

    quiet_mlflow()
    before = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(TRACKING_URI_ENV, None)
    else:
        os.environ[TRACKING_URI_ENV] = before


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name` in the current store, created on first use."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location)


def end_mlflow_runs(tracking_uri: str, dagster_run_ids: Iterable[str], status: str = "KILLED") -> list[str]:
    """End the RUNNING MLflow runs started by these Dagster runs; returns the MLflow run ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    ended = []
    for run_id in dagster_run_ids:
        if not experiments:
            break
        runs = client.search_runs(experiments, filter_string=f"tags.`{DAGSTER_RUN_TAG}` = '{run_id}' "
                                                             f"and attributes.status = 'RUNNING'")
        for run in runs:
            client.set_terminated(run.info.run_id, status)
            ended.append(run.info.run_id)
    return ended


def local_source(path: str):
    """A dataset source for a local folder, built directly: letting MLflow guess the kind from
    the string warns that two of its registered sources match."""
    from mlflow.data.dataset_source import DatasetSource

    class LocalFolderSource(DatasetSource):
        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "local"

        def load(self, dst_path=None) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            return cls(str(raw_source))

        def to_dict(self) -> dict:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict):
            return cls(source_dict["uri"])

    return LocalFolderSource(path)
