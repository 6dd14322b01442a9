"""A real distributed run: ingestion shards and extraction executed by two Celery worker
processes (dagster-celery, Redis broker, Dagster instance on PostgreSQL), all started here on
127.0.0.1 and stopped after; the outputs must be byte-identical to a single-process run."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import register_shards
from ingestion.layout import archive_shards
from common.paths import REPO_ROOT
from pipeline.settings import layout
from tests.servers import (PostgresUnavailable, deploy_instance, postgres_bin_dir, require_services, running_postgres,
                           running_redis, service_unavailable, start_server, stop_server, wait_until)

MISSING = [name for name, present in (
    ("redis-server (apt-get install redis-server)", shutil.which("redis-server") is not None),
    ("PostgreSQL server binaries (apt-get install postgresql)", postgres_bin_dir() is not None),
    *((f"Python package {m} (pip install -e '.[deploy]')", importlib.util.find_spec(m) is not None)
      for m in ("dagster_celery", "redis", "psycopg2", "dagster_postgres")),
) if not present]


@pytest.fixture(autouse=True)
def services():
    """Skip where redis-server / PostgreSQL are missing; fail under CI=true (tests/servers.py)."""
    require_services(MISSING)

WORKERS = ("alpha", "beta")
DIGESTED = ("dicom_index", "cxr_images", "reports", "triplets", "report_labels")
OPS = {"cxr_images": {"config": {"image_size": 48, "workers": 1}}}


def test_ingestion_and_extraction_run_on_two_celery_workers_with_the_single_process_digests(home, tmp_path,
                                                                                             monkeypatch):
    from corpus.generate import generate_corpus
    from pipeline.runner import materialise

    generate_corpus(layout(home).corpus, studies=24, seed=5, image_size=96)
    shards = archive_shards(layout(home).corpus, digits=2)[:4]
    assert len(shards) >= 3

    # The reference: the same archive, one process, SQLite instance, another data root.
    reference_home = tmp_path / "reference"
    shutil.copytree(layout(home).corpus, layout(reference_home).corpus)
    monkeypatch.setenv("MEDFILIP_HOME", str(reference_home))
    with dg.instance_for_test() as instance:
        assert materialise("ingestion_job", partitions=shards, instance=instance, ops_config=OPS)["failed"] == 0
        assert materialise("extraction_job", instance=instance)["failed"] == 0
        expected = digests(instance)
    monkeypatch.setenv("MEDFILIP_HOME", str(home))

    with contextlib.ExitStack() as stack:
        try:
            postgres = stack.enter_context(running_postgres())
        except PostgresUnavailable as error:
            service_unavailable(str(error))
        broker = stack.enter_context(running_redis())
        instance, _ = stack.enter_context(deploy_instance(postgres, home, monkeypatch))
        config_dir = tmp_path / "celery_config"
        config_dir.mkdir()
        (config_dir / "dagster_celery_config.py").write_text(
            f"broker_url = '{broker}/0'\nresult_backend = '{broker}/1'\nworker_prefetch_multiplier = 1\n")
        for name in WORKERS:
            stack.callback(stop_server, start_worker(name, config_dir, tmp_path / f"worker-{name}.log"))
        run_config = {"execution": {"config": {"broker": f"{broker}/0", "backend": f"{broker}/1"}}, "ops": OPS}

        from dagster._core.definitions.reconstruct import ReconstructableRepository

        location = ReconstructableRepository.for_module("pipeline.celery_location", "defs",
                                                        working_directory=str(REPO_ROOT))
        register_shards(instance, shards)
        for shard in shards:
            result = dg.execute_job(location.get_reconstructable_job("ingestion_job"), instance=instance,
                                    run_config=run_config, tags={"dagster/partition": shard})
            assert result.success, (shard, worker_logs(tmp_path))
        result = dg.execute_job(location.get_reconstructable_job("extraction_job"), instance=instance,
                                run_config={"execution": run_config["execution"]})
        assert result.success, worker_logs(tmp_path)

        placed = steps_by_worker(instance)
        assert placed and all(host.split("@")[0] in WORKERS for host in placed.values())
        busy = {host.split("@")[0] for host in placed.values()}
        assert busy == set(WORKERS), f"one worker did everything: {placed}"
        steps = {step for run_id, step in placed}
        assert {"dicom_index", "cxr_images", "reports", "llm_extractions", "triplets"} <= steps
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        actual = digests(instance)
    assert actual == expected and len(expected) == 3 * len(shards) + 2


def digests(instance: dg.DagsterInstance) -> dict[tuple[str, str | None], str]:
    """(asset, partition) -> sha256 of the file the latest materialisation wrote."""
    found = {}
    for asset in DIGESTED:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
        for record in records:
            key = (asset, record.partition_key)
            if key not in found:  # newest first
                found[key] = record.asset_materialization.metadata["sha256"].value
    return found


def steps_by_worker(instance: dg.DagsterInstance) -> dict[tuple[str, str], str]:
    """(run id, step key) -> hostname of the Celery worker that executed it."""
    placed = {}
    for run in instance.get_runs():
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            worker = event.engine_event_data.metadata.get("Celery worker") if event.engine_event_data else None
            if worker is not None:
                placed[(run.run_id, event.step_key)] = str(worker.value)
    return placed


def start_worker(name: str, config_dir: Path, log_path: Path):
    """One `celery worker` process (solo pool: it executes the steps itself), ready when it
    says so in its log; its environment carries the instance, data root and broker config."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(config_dir)]))
    command = [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "-n", f"{name}@%h",
               "--pool", "solo", "--prefetch-multiplier", "1", "-Q", "dagster", "-l", "INFO", "--without-gossip",
               "--without-mingle", "--without-heartbeat"]
    server = start_server(command, log_path, env=env, cwd=REPO_ROOT)
    wait_until(lambda: "ready." in server.log_tail(20000), timeout_s=120, what=f"celery worker {name}", server=server)
    return server


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in tmp_path.glob("worker-*.log"))
