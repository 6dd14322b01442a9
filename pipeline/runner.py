"""Materialise a job, group or asset in the real instance (DAGSTER_HOME), one run per
partition, so CLI runs appear in the UI exactly like runs launched there.

A failed step is one line for the terminal (`failure_cause`): the root exception of Dagster's
error chain, its message, and where our code raised it; the traceback and Dagster's event
records stay in the run's event log (the UI), or on the terminal with `quiet=False`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from assets.partitions import discover_shards, register_shards, shard_digits
from ingestion.layout import SHARDS, shard_problem
from pipeline.run_health import process_tags, sweep_dead_runs

# Step-level DEBUG events are in the UI; the terminal gets the asset functions' own logs.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# Our packages: a traceback frame in one of them is where "our code" raised (checkout or installed).
_OURS = ("assets", "pipeline", "ingestion", "extraction", "knowledge", "training", "evaluation", "tracking",
         "medfilip_model", "corpus", "common")
_PACKAGES_ROOT = Path(__file__).resolve().parent.parent
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+)')
_MAX_MESSAGE = 500


@dg.logger(config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
           description="The asset functions' own log lines on stderr, without Dagster's event records.")
def asset_log_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    """The console of CLI runs: a failed step's two tracebacks and event JSON stay in the UI's
    event log, and `medfilip run` prints the cause in one line instead."""
    log = logging.Logger("medfilip.run", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: (getattr(record, "dagster_meta", None) or {}).get("dagster_event") is None)
    handler.setFormatter(_AssetLogFormatter())
    log.addHandler(handler)
    return log


class _AssetLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        step, text = meta.get("step_key"), meta.get("orig_message", record.getMessage())
        level = "" if record.levelno <= logging.INFO else f" {record.levelname}"
        return f"{step or 'run'}{level}: {text}"


def materialise(target: str, partitions: Sequence[str] | None = None,
                instance: dg.DagsterInstance | None = None, ops_config: dict | None = None,
                partition_digits: int | None = None, defs: dg.Definitions | None = None,
                quiet: bool = True) -> dict:
    """Run `target` once per partition (by default every shard in the archive, registered as
    partitions first, `partition_digits` subject-id digits each: by default those the instance
    already uses, else PARTITION_DIGITS); a summary with row counts,
    each asset's scalar metadata, failed checks (WARN included), and for a failed run which
    step broke and why, in one line. Runs left behind by a killed `medfilip` are cleaned first.
    `defs`: by default the code location built from the current settings. `quiet`: the terminal
    gets the asset functions' log lines only, not Dagster's event records and tracebacks."""
    defs = defs or current_definitions()
    instance = instance or dg.DagsterInstance.get()
    dead = sweep_dead_runs(instance, mlflow_uri(defs))
    job = resolve_job(defs, target, loggers={"console": asset_log_console} if quiet else None)
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
        add_run(summary, key, result, defs)
    return summary


def add_run(summary: dict, key: str | None, result: dg.ExecuteInProcessResult, defs: dg.Definitions) -> None:
    """One run's counts, scalar metadata, failed checks and failures into the summary."""
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
    checks = [event.event_specific_data for event in result.all_events
              if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed]
    summary["failed_checks"] += [{"partition": key, "asset": check.asset_key.to_user_string(),
                                  "check": check.check_name, "severity": check.severity.value,
                                  "description": check.description or ""} for check in checks]
    failures = [(event.step_key, event.event_specific_data.error) for event in result.all_events
                if event.event_type_value == "STEP_FAILURE"]
    if not result.success and not failures:  # the run failed outside any step
        failures = [(None, event.event_specific_data.error if event.event_specific_data else None)
                    for event in result.all_events if event.event_type_value == "RUN_FAILURE"][:1]
    for step, error in failures:
        blocking = [c for c in summary["failed_checks"] if c["partition"] == key and c["asset"] == step
                    and c["severity"] == "ERROR"]
        summary["failures"].append({"partition": key, "step": step or summary["target"], "run_id": result.run_id,
                                    **failure_cause(error, blocking, defs, step)})


def shards_to_run(defs: dg.Definitions, digits: int) -> list[str]:
    """Every shard of the configured archive; none found (no archive yet) gives the ten pNN
    folders, whose runs then fail or warn in one line exactly as a shard run does."""
    found = discover_shards(defs.resources["storage"], defs.resources["archive"], digits)
    return found or list(SHARDS)


def root_error(error: object) -> object:
    """The exception that caused a step's failure: down Dagster's chain of SerializableErrorInfo
    (a DagsterExecutionStepExecutionError's cause is the exception the asset raised; that one's
    cause or context the one it came from), stopping at a dg.Failure, whose description is
    already the message meant for a person."""
    while getattr(error, "cls_name", None) != "Failure":
        deeper = getattr(error, "cause", None) or getattr(error, "context", None)
        if deeper is None:
            break
        error = deeper
    return error


def failure_cause(error: object, blocking_checks: Sequence[dict] = (), defs: dg.Definitions | None = None,
                  step: str | None = None) -> dict:
    """The one line a person needs: a dg.Failure's description; else the root exception's type,
    its message, where our code raised it, and the command that rewrites a corrupt input file.
    `error` (a STEP_FAILURE's SerializableErrorInfo) as {"error": that line, "exception": the root
    exception's type, "location": our file:line that raised it, or ""}. A step stopped by its
    blocking checks names the checks and their descriptions instead of Dagster's wrapper."""
    if error is None:
        return {"error": "failed without an error record (see the run in the UI)", "exception": "", "location": ""}
    root = root_error(error)
    kind = getattr(root, "cls_name", None) or "Exception"
    message = " ".join(re.sub(rf"^[\w.]*\b{re.escape(kind)}(: ?|$)", "", root.message.strip()).split())  # type: ignore[attr-defined]
    if kind == "DagsterAssetCheckFailedError" and blocking_checks:
        text = "; ".join(f"blocking check {c['check']} failed: {c['description'] or 'no description'}"
                         for c in blocking_checks)
        return {"error": text, "exception": kind, "location": ""}
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    if kind == "Failure":  # written for a person, naming the fix: nothing to add
        return {"error": message, "exception": kind, "location": ""}
    location = our_frame(getattr(root, "stack", None) or [])
    text = f"{kind}: {message}" if message else kind
    if location:
        text += f" (raised at {location})"
    hint = rebuild_hint(message, defs, step) if defs is not None else ""
    return {"error": text + (f"; {hint}" if hint else ""), "exception": kind, "location": location}


def our_frame(stack: Sequence[str]) -> str:
    """path:line of the innermost traceback frame in our packages, relative to where they live."""
    for entry in reversed(stack):
        match = _FRAME_RE.search(entry)
        if not match:
            continue
        path = Path(match.group(1))
        if path.is_relative_to(_PACKAGES_ROOT) and path.relative_to(_PACKAGES_ROOT).parts[0] in _OURS:
            return f"{path.relative_to(_PACKAGES_ROOT)}:{match.group(2)}"
    return ""


def rebuild_hint(message: str, defs: dg.Definitions, step: str | None) -> str:
    """For a missing or unreadable output file of another asset (a corrupt Parquet file in the
    data root), the command that writes it."""
    data = defs.resources["storage"].layout().data
    match = re.search(re.escape(str(data)) + r"/([\w]+)/([\w.-]+)\.parquet", message)
    if not match or match.group(1) == step:
        return ""
    asset, stem = match.groups()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    if asset not in keys:
        return ""
    partitioned = defs.resolve_asset_graph().get(dg.AssetKey(asset)).partitions_def is not None
    return f"materialise it: medfilip run {asset}" + (f" --partition {stem}" if partitioned else "")


def resolve_job(defs: dg.Definitions, target: str,
                loggers: dict[str, dg.LoggerDefinition] | None = None) -> dg.JobDefinition:
    """A job by name, else an ad-hoc job over an asset key or a group name; `loggers` replace
    Dagster's default console logger for this run."""
    job_names = {job.name for job in defs.resolve_all_job_defs()}
    if target in job_names:
        if not loggers:
            return defs.resolve_job_def(target)
        job = next(job for job in defs.jobs or () if job.name == target)
        return dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks, resources=defs.resources,
                              jobs=[job], loggers=loggers).resolve_job_def(target)
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
    return dg.Definitions(assets=defs.assets, resources=defs.resources, jobs=[job],
                          loggers=loggers).resolve_job_def(job.name)


def current_definitions() -> dg.Definitions:
    """The code location as a run launched now would load it: settings read afresh (a test or a
    long-lived process may have changed the environment since pipeline.definitions was imported)."""
    from pipeline.definitions import build_definitions
    from pipeline.settings import load_settings

    return build_definitions(load_settings())


def mlflow_uri(defs: dg.Definitions) -> str:
    """The MLflow store the code location's resources point at."""
    return defs.resources["mlflow_tracking"].uri(defs.resources["storage"])
