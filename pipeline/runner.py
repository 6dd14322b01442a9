"""Materialise a job, group or asset in the real instance (DAGSTER_HOME), one run per
partition, so CLI runs appear in the UI exactly like runs launched there."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from assets.partitions import discover_shards, register_shards, shard_digits
from ingestion.layout import SHARDS, shard_problem
from pipeline.run_health import process_tags, sweep_dead_runs

# Step-level DEBUG events are in the UI; the terminal gets the asset functions' own logs.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def materialise(target: str, partitions: Sequence[str] | None = None,
                instance: dg.DagsterInstance | None = None, ops_config: dict | None = None,
                partition_digits: int | None = None, defs: dg.Definitions | None = None) -> dict:
    """Run `target` once per partition (by default every shard in the archive, registered as
    partitions first, `partition_digits` subject-id digits each: by default those the instance
    already uses, else PARTITION_DIGITS); a summary with row counts,
    each asset's scalar metadata, failed checks (WARN included), and for a failed run which
    step broke and why. Runs left behind by a killed `medfilip` are cleaned first. `defs`: by
    default the code location built from the current settings."""
    defs = defs or current_definitions()
    instance = instance or dg.DagsterInstance.get()
    dead = sweep_dead_runs(instance, mlflow_uri(defs))
    job = resolve_job(defs, target)
    partitioned = job.partitions_def is not None
    keys = list(partitions or (shards_to_run(defs, shard_digits(instance, partition_digits)) if partitioned else [None]))
    if partitioned:
        problems = [p for p in map(shard_problem, keys) if p]
        if problems:
            raise SystemExit(problems[0])
        register_shards(instance, keys)
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


def shards_to_run(defs: dg.Definitions, digits: int) -> list[str]:
    """Every shard of the configured archive; none found (no archive yet) gives the ten pNN
    folders, whose runs then fail or warn in one line exactly as a shard run does."""
    found = discover_shards(defs.resources["storage"], defs.resources["archive"], digits)
    return found or list(SHARDS)


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


def current_definitions() -> dg.Definitions:
    """The code location as a run launched now would load it: settings read afresh (a test or a
    long-lived process may have changed the environment since pipeline.definitions was imported)."""
    from pipeline.definitions import build_definitions
    from pipeline.settings import load_settings

    return build_definitions(load_settings())


def mlflow_uri(defs: dg.Definitions) -> str:
    """The MLflow store the code location's resources point at."""
    return defs.resources["mlflow_tracking"].uri(defs.resources["storage"])
