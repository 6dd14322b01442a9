"""Automation: a prompt edit re-runs extraction.

The sensor hashes the extraction instruction (prompt files, or rules + vocabulary) every
30 s. On a change it records an observation of the `prompts` source asset with the new data
version, which marks `llm_extractions` and everything downstream unsynced in the UI, and it
requests `extraction_job`, which re-asks the backend only for cache misses.
"""

import hashlib
import json

import dagster as dg

from assets.partitions import register_shards, shard_digits
from assets.resources import ArchiveResource, ExtractorResource, MLflowResource, StorageResource
from ingestion.layout import archive_problem, shard_fingerprints
from pipeline.jobs import extraction_job, ingestion_job
from pipeline.run_health import sweep_dead_runs

PROMPT_VERSION_TAG = "medfilip/prompt_version"


@dg.sensor(job=extraction_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Re-run extraction when the current prompt version (prompts/, or the rules "
                       "vocabulary) is not the one the current llm_extractions was made with.")
def prompt_change_sensor(context: dg.SensorEvaluationContext, extractor: ExtractorResource):
    """Converges on the current version: whenever it differs from the latest extraction's, one run
    is requested, also for a version seen before (its answers come from the cache). The run key
    names the version and the materialisation it replaces, so the daemon launches it once per
    (version, current extraction) and never again for that pair, however many ticks pass."""
    version = extractor.prompt_version()
    observation = dg.AssetObservation(asset_key="prompts", tags={"dagster/data_version": version},
                                      metadata={"prompt_version": version, "backend": extractor.backend_config().kind,
                                                "prompt_files": ", ".join(extractor.prompt_files())})
    events = [observation] if version != context.cursor else []
    latest = latest_extraction(context.instance)
    if latest is not None and latest[0] == version:
        return dg.SensorResult(asset_events=events, cursor=version,
                               skip_reason=None if events else f"llm_extractions already uses prompt version {version}")
    replaces = f"after-{latest[1]}" if latest else "first"
    context.log.info(f"prompt version {latest[0] if latest else '(none)'} -> {version}: re-running extraction")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"prompt-{version}-{replaces}", tags={PROMPT_VERSION_TAG: version})],
        asset_events=events,
        cursor=version,
    )


def latest_extraction(instance: dg.DagsterInstance) -> tuple[str, int] | None:
    """(prompt version, storage id) of the current llm_extractions materialisation."""
    records = instance.fetch_materializations(dg.AssetKey("llm_extractions"), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("prompt_version")
    return (str(value.value)[:16] if value is not None else "", int(records[0].storage_id))


# Evaluates the eager conditions of the assets derived from extraction (assets/automation.py);
# off until switched on, like prompt_change_sensor, with which `medfilip demo` starts it.
prompt_downstream_sensor = dg.AutomationConditionSensorDefinition(
    "prompt_downstream_sensor",
    target=dg.AssetSelection.assets("triplets", "report_labels", "training_texts", "text_embeddings", "ssm"),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Re-materialise triplets, report labels, training texts, embeddings and SSM once their inputs change.",
)

@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Mark runs whose `medfilip` process died as failed, freeing their pool slots "
                       "and ending their MLflow runs as KILLED.")
def dead_run_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, mlflow_tracking: MLflowResource):
    dead = sweep_dead_runs(context.instance, mlflow_tracking.uri(storage))
    if dead:
        context.log.warning(f"marked {len(dead)} dead run(s) failed: {', '.join(dead)}")
    return dg.SkipReason(f"{len(dead)} dead run(s) cleaned" if dead else "no dead runs")


ARRIVAL_TAG = "medfilip/arrival"


@dg.sensor(jobs=[ingestion_job, extraction_job], minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Ingest the shards where new studies arrived (only those), then re-run extraction once "
                       "they succeeded; extraction asks the backend only for the new reports (cache).")
def archive_arrival_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, archive: ArchiveResource):
    """Cursor: {"shards": {shard: fingerprint}, "pending": batch id whose ingestion runs must
    finish before extraction}. The first tick only records the archive as it is: shards ingested
    before the sensor was switched on are not re-run."""
    state = json.loads(context.cursor) if context.cursor else None
    roots = {archive.image_root(storage), archive.reports_root(storage)}
    problem = next((p for p in map(archive_problem, roots) if p), None)
    if problem:
        return dg.SkipReason(problem)
    digits = shard_digits(context.instance, None)
    now: dict[str, str] = {}
    for root in sorted(roots):
        for shard, digest in shard_fingerprints(root, digits).items():
            now[shard] = digest if shard not in now else f"{now[shard]}+{digest}"
    if state is None:
        register_shards(context.instance, sorted(now))
        return dg.SensorResult(cursor=json.dumps({"shards": now, "pending": None}),
                               skip_reason=f"recorded {len(now)} shards; new studies from now on are ingested")
    requests: list[dg.RunRequest] = []
    pending = state.get("pending")
    if pending:
        runs = context.instance.get_runs(filters=dg.RunsFilter(tags={ARRIVAL_TAG: pending}))
        if runs and all(run.is_finished for run in runs):  # none yet: the daemon has not launched them
            if all(run.is_success for run in runs):
                requests.append(dg.RunRequest(run_key=f"arrival-extract-{pending}", job_name=extraction_job.name,
                                              tags={ARRIVAL_TAG: f"{pending}-extract"}))
            else:  # the run keys are used up: the sensor will not retry, a person re-runs the shard
                failed = sorted(run.tags.get("dagster/partition", "?") for run in runs if not run.is_success)
                context.log.warning(f"arrival batch {pending}: ingestion failed for {', '.join(failed)}; extraction "
                                    f"not started: fix the cause, then `medfilip run ingestion_job --partition "
                                    f"{failed[0]}` (each) and `medfilip run extraction_job`")
            pending = None
    changed = [shard for shard, digest in now.items() if state["shards"].get(shard) != digest]
    new_shards = [shard for shard in changed if shard not in state["shards"]]
    if changed and not pending:  # one batch at a time: extraction must see all of it
        pending = hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:12]
        context.log.info(f"new studies in {len(changed)} shard(s): {', '.join(changed[:20])}")
        requests += [dg.RunRequest(run_key=f"arrival-{shard}-{now[shard]}", job_name=ingestion_job.name,
                                   partition_key=shard, tags={ARRIVAL_TAG: pending}) for shard in changed]
        known = {**state["shards"], **{shard: now[shard] for shard in changed}}
    else:
        known = state["shards"]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest("archive_shards", new_shards)]
        if new_shards and requests else [],
        cursor=json.dumps({"shards": known, "pending": pending}),
        skip_reason=None if requests else "no new studies",
    )
