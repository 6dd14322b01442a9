"""Materialise a job, group or asset in the real instance (DAGSTER_HOME), one run per
partition, so CLI runs appear in the UI exactly like runs launched there."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from ingestion.layout import SHARDS
from pipeline.run_health import process_tags, sweep_dead_runs

# Step-level DEBUG events are in the UI; the terminal gets the asset functions' own logs.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def materialise(target: str, partitions: Sequence[str] | None = None,
                instance: dg.DagsterInstance | None = None, ops_config: dict | None = None) -> dict:
    """Run `target` once per partition (all shards by default); a summary with row counts,
    each asset's scalar metadata, failed checks (WARN included), and for a failed run which
    step broke and why. Runs left behind by a killed `medfilip` are cleaned first."""
    from pipeline.definitions import defs
    from pipeline.settings import USER_MLFLOW_TRACKING_URI, layout

    instance = instance or dg.DagsterInstance.get()
    dead = sweep_dead_runs(instance, USER_MLFLOW_TRACKING_URI or layout().mlflow_tracking_uri)
    job = resolve_job(defs, target)
    partitioned = job.partitions_def is not None
    keys = list(partitions or (SHARDS if partitioned else [None]))
    run_config = {**QUIET, "ops": dict(ops_config or {})}
    selected = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}
    run_config["ops"] = {op: cfg for op, cfg in run_config["ops"].items() if op in selected}
    summary = {"target": target, "runs": [], "succeeded": 0, "failed": 0, "rows": {}, "assets": {}, "failures": [],
               "failed_checks": [], "dead_runs_cleaned": dead}
    for key in keys:
        result = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False,
                                        run_config=run_config,
                                        tags={"medfilip/launched_by": "cli", **process_tags()})
        summary["runs"].append({"partition": key, "run_id": result.run_id, "success": result.success})
        summary["succeeded" if result.success else "failed"] += 1
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            name = mat.asset_key.to_user_string()
            values = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str))
                      and not (isinstance(v.value, str) and len(v.value) > 200)}
            summary["assets"][name] = values
            if "dagster/row_count" in values:
                summary["rows"][name] = summary["rows"].get(name, 0) + int(values["dagster/row_count"])
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                error = event.event_specific_data.error
                summary["failures"].append({"partition": key, "step": event.step_key, "run_id": result.run_id,
                                            "error": failure_text(error)})
            elif event.event_type_value == "ASSET_CHECK_EVALUATION":
                check = event.event_specific_data
                if not check.passed:
                    summary["failed_checks"].append({
                        "partition": key, "asset": check.asset_key.to_user_string(), "check": check.check_name,
                        "severity": check.severity.value, "description": check.description or ""})
    return summary


def failure_text(error: object) -> str:
    """The one line a person needs: a Failure's description without the class-path prefix."""
    if error is None:
        return "unknown"
    message = error.message.strip()  # type: ignore[attr-defined]
    prefix = "dagster._core.definitions.events.Failure: "
    return message[len(prefix):] if message.startswith(prefix) else message


def resolve_job(defs: dg.Definitions, target: str) -> dg.JobDefinition:
    """A job by name, else an ad-hoc job over an asset key or a group name."""
    job_names = {job.name for job in defs.resolve_all_job_defs()}
    if target in job_names:
        return defs.resolve_job_def(target)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    if target in keys:
        selection = dg.AssetSelection.assets(target)
    elif target in groups:
        selection = dg.AssetSelection.groups(target)
    else:
        raise SystemExit(f"unknown target {target!r}: not a job ({sorted(job_names)}), "
                         f"asset ({sorted(keys)}) or group ({sorted(groups)})")
    job = dg.define_asset_job(f"medfilip_run__{target}", selection=selection)
    return dg.Definitions(assets=defs.assets, resources=defs.resources, jobs=[job]).resolve_job_def(job.name)
