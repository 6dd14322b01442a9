"""One MLflow store per code location: a non-default `tracking_uri` on the resource (or in
medfilip.yaml) is where the runner's bookkeeping and `medfilip lineage` look, never the data
root's own SQLite store (issue 20: runner and lineage used to ignore the resource)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import dagster as dg
import mlflow
from mlflow.tracking import MlflowClient

from pipeline.definitions import build_definitions
from pipeline.runner import materialise, mlflow_uri
from pipeline.run_health import HOST_TAG, PID_TAG
from pipeline.settings import load_settings, prepare_home
from tracking.store import DAGSTER_RUN_TAG, TRACKING_URI_ENV, resolve_tracking_uri, use_tracking_uri


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_runner_ends_dead_runs_in_the_resources_store_not_the_default(home, tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    config = tmp_path / "medfilip.yaml"
    config.write_text(f"mlflow:\n  tracking_uri: {other}\n")
    defs = build_definitions(load_settings(config))
    assert mlflow_uri(defs) == other != resolve_tracking_uri(None, home)
    lay = prepare_home(home)
    use_tracking_uri(other)
    client = MlflowClient(other)
    experiment = client.create_experiment("medfilip")
    with dg.instance_for_test() as instance:
        # A CLI run whose process is gone, as kill -9 leaves it (tests/test_faults.py kills a real one).
        run = instance.create_run_for_job(defs.resolve_job_def("extraction_job"), status=dg.DagsterRunStatus.STARTED,
                                          tags={PID_TAG: str(dead_pid()), HOST_TAG: socket.gethostname()})
        tracked = client.create_run(experiment, tags={DAGSTER_RUN_TAG: run.run_id})
        summary = materialise("knowledge_base", instance=instance, defs=defs)
    assert summary["dead_runs_cleaned"] == [run.run_id]
    assert client.get_run(tracked.info.run_id).info.status == "KILLED"
    assert not lay.mlflow_db.exists()  # nothing went to the data root's own store


def test_lineage_reads_the_model_from_the_configured_store(tmp_path, monkeypatch):
    from pipeline.cli import main

    monkeypatch.setenv("MEDFILIP_HOME", str(tmp_path / "home"))
    prepare_home(tmp_path / "home", set_dagster_home=False)
    other = f"sqlite:///{tmp_path / 'server.db'}"
    record = tmp_path / "lineage.json"
    record.write_text(json.dumps({"checkpoint": "x.pt", "checkpoint_sha256": "ab", "mlflow_run_id": "r",
                                  "dagster_run_id": "d", "inputs": []}))
    client = MlflowClient(other)
    experiment = client.create_experiment("medfilip", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifact(run.info.run_id, str(record))
    client.set_terminated(run.info.run_id)
    before = os.environ.get(TRACKING_URI_ENV)
    monkeypatch.setenv(TRACKING_URI_ENV, other)
    assert main(["lineage", run.info.run_id, "--json"]) == 0
    assert os.environ.get(TRACKING_URI_ENV) == other  # the user's setting is left as it was
    monkeypatch.delenv(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(before or "")  # leave no global store behind for the next test
