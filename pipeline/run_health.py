"""Runs whose process died: noticed, marked failed, their pool slots and MLflow runs released.

A CLI run executes inside the `medfilip` process; kill -9 of that process leaves the Dagster
run STARTED forever, holding its pool slot (the next training waits on the `gpu` pool) and its
MLflow run RUNNING. Each CLI run carries the pid and host of its process as tags, so a later
`medfilip` command, or the `dead_run_sensor` in the daemon, can tell a live run from a dead one.
Runs launched from the UI run in the run launcher's worker; for those, Dagster's own run
monitoring (enabled in the instance config written by `prepare_home`) applies.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

from common.storage import process_alive
from tracking.store import end_mlflow_runs

PID_TAG = "medfilip/pid"
HOST_TAG = "medfilip/host"


def process_tags() -> dict[str, str]:
    """Tags that let a later process check whether this one is still alive."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def sweep_dead_runs(instance: dg.DagsterInstance, mlflow_tracking_uri: str | None = None) -> list[str]:
    """Mark every unfinished run of this host whose process is gone as failed, free its
    concurrency slots, and end its MLflow runs as KILLED. Returns the run ids cleaned."""
    host = socket.gethostname()
    records = instance.get_run_records(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING]))
    dead = []
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG)
        if run.tags.get(HOST_TAG) != host or not pid or process_alive(int(pid)):
            continue
        instance.report_run_failed(run, f"the process that ran it (pid {pid}) is gone, killed or crashed; "
                                        f"marked failed by medfilip so its pool slots are free")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(run.run_id)
    if dead and mlflow_tracking_uri:
        end_mlflow_runs(mlflow_tracking_uri, dead)
    return dead
