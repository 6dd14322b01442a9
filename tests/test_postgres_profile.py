"""The multi-machine profile (deploy/): Dagster and MLflow on a real PostgreSQL server.

A throw-away cluster is started from Debian's postgresql binaries; where those (or the Python
clients) are not installed the tests skip, saying why, and fail under CI=true (tests/servers.py). The Kubernetes executor cannot run without a cluster, so
only its run config is checked against the real jobs' schema.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from common.paths import REPO_ROOT
from tests.servers import (PostgresUnavailable, deploy_instance, free_port, http_ok, postgres_bin_dir, require_services,
                           running_postgres, service_unavailable, start_server, stop_server, wait_until)

pytestmark = pytest.mark.slow  # > 30 s: see pyproject's markers

DEPLOY = REPO_ROOT / "deploy"
MISSING = [name for name, present in (
    ("PostgreSQL server binaries (apt-get install postgresql)", postgres_bin_dir() is not None),
    *((f"Python package {m} (pip install -e '.[deploy]')", importlib.util.find_spec(m) is not None)
      for m in ("psycopg2", "dagster_postgres")),
) if not present]


@pytest.fixture(scope="module")
def postgres():
    require_services(MISSING)
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(running_postgres())
        except PostgresUnavailable as error:
            service_unavailable(str(error))
        yield pg


@pytest.fixture
def pg_instance(postgres, home: Path, monkeypatch: pytest.MonkeyPatch):
    """A Dagster instance configured by deploy/dagster.yaml on its own fresh database."""
    with deploy_instance(postgres, home, monkeypatch) as pair:
        yield pair


def test_pipeline_runs_and_materialisations_are_recorded_in_postgres(pg_instance, postgres, home: Path):
    from corpus.generate import generate_corpus
    from pipeline.runner import materialise
    from pipeline.settings import layout

    instance, database = pg_instance
    generate_corpus(layout(home).corpus, studies=12, seed=3, image_size=128)
    shard = first_shard(layout(home).corpus)

    ingestion = materialise("ingestion_job", partitions=[shard], instance=instance)
    # The extraction group only: extraction_job also trains the model downstream, not needed here.
    extraction = materialise("extraction", instance=instance)

    assert ingestion["failed"] == 0 and extraction["failed"] == 0, (ingestion, extraction)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    runs = instance.get_runs()
    assert {run.run_id for run in runs} == {r["run_id"] for r in ingestion["runs"] + extraction["runs"]}
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    for asset in ("dicom_index", "cxr_images", "reports"):
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None and event.dagster_event.partition == shard, asset
    assert instance.get_latest_materialization_event(dg.AssetKey("triplets")) is not None
    # Read the server's own tables: the records are in PostgreSQL, not in a SQLite file beside it.
    stored_runs = postgres.query(database, "SELECT run_id, status FROM runs")
    assert sorted(stored_runs) == sorted((run.run_id, "SUCCESS") for run in runs)
    stored_reports = postgres.query(
        database, "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                  "AND asset_key = %s", (dg.AssetKey("reports").to_string(),))
    assert stored_reports == [(shard,)]
    assert not list((home / "dagster").rglob("*.db")), "profile must not fall back to SQLite"


def test_profile_run_queue_limits_and_gpu_pool_are_enforced_by_the_instance(pg_instance):
    instance, _ = pg_instance
    queue = instance.get_concurrency_config().run_queue_config
    profile = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["concurrency"]
    assert queue.max_concurrent_runs == profile["runs"]["max_concurrent_runs"]
    limits = {(limit["key"], str(limit.get("value"))): limit["limit"] for limit in queue.tag_concurrency_limits}
    assert limits[("medfilip/stage", "ingestion")] == 8
    assert limits[("medfilip/gpu_node", "{'applyLimitPerUniqueValue': True}")] == 1

    # The command docs/operations.md gives for the GPU pool, against the same instance.
    result = subprocess.run([str(Path(sys.executable).with_name("dagster")), "instance", "concurrency", "set",
                             "gpu", "2"], capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 2


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_the_store(postgres, tmp_path: Path):
    """`mlflow server` as docs/operations.md runs it: runs in PostgreSQL, artifacts proxied."""
    import mlflow
    from mlflow.tracking import MlflowClient

    postgres.create_database("mlflow")
    artifacts = tmp_path / "mlartifacts"
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", postgres.url("mlflow", driver="postgresql+psycopg2"),
               "--artifacts-destination", str(artifacts)]
    server = start_server(command, tmp_path / "mlflow.log", env=os.environ.copy(), url=f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: http_ok(f"{server.url}/health"), timeout_s=90, what="MLflow server up", server=server)
        client = MlflowClient(tracking_uri=server.url)
        experiment = client.create_experiment("medfilip-profile")
        run = client.create_run(experiment, tags={"dagster/run_id": "r-123"})
        client.log_param(run.info.run_id, "prompt_sha256", "abc123")
        client.log_metric(run.info.run_id, "zero_shot_auc", 0.75, step=1)
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(os.urandom(2048))
        client.log_artifact(run.info.run_id, str(checkpoint), artifact_path="checkpoints")
        client.set_terminated(run.info.run_id)

        assert postgres.query("mlflow", "SELECT key, value FROM metrics") == [("zero_shot_auc", 0.75)]
        assert ("dagster/run_id", "r-123") in postgres.query("mlflow", "SELECT key, value FROM tags")
        stored = list(artifacts.rglob("model.pt"))
        assert len(stored) == 1 and stored[0].read_bytes() == checkpoint.read_bytes()
        downloaded = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/model.pt",
                                                         dst_path=str(tmp_path / "back"), tracking_uri=server.url)
        assert Path(downloaded).read_bytes() == checkpoint.read_bytes()
    finally:
        stop_server(server)


@pytest.mark.parametrize("job_name", ["ingestion_job", "extraction_job"])
def test_k8s_executor_run_config_is_valid_for_the_pipeline_jobs(job_name: str, home: Path,
                                                                monkeypatch: pytest.MonkeyPatch):
    if importlib.util.find_spec("dagster_k8s") is None:
        service_unavailable("Python package dagster_k8s (pip install -e '.[deploy]'): the k8s executor's run config")
    from dagster_k8s import k8s_job_executor

    from pipeline.definitions import defs

    from pipeline.jobs import jobs

    monkeypatch.setenv("MEDFILIP_IMAGE", "medfilip:test")  # the image is named by the environment
    run_config = yaml.safe_load((DEPLOY / "k8s-executor.yaml").read_text())
    job = defs.resolve_job_def(job_name)
    if "archive" not in job.resource_defs:
        run_config["resources"].pop("archive")
    # How a deployment switches executors: the same jobs, a Definitions-wide executor.
    k8s_defs = dg.Definitions(assets=defs.assets, resources=defs.resources, jobs=jobs, executor=k8s_job_executor)
    dg.validate_run_config(k8s_defs.resolve_job_def(job_name), run_config)
    # And the same file is rejected by the default executor: the check above is not vacuous.
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, run_config)


def first_shard(corpus: Path) -> str:
    shards = sorted(path.name for path in (corpus / "files").iterdir() if path.is_dir())
    assert shards, f"no shard folders in {corpus}"
    return shards[0]
