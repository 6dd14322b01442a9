"""Automation: a prompt edit re-runs extraction.

The sensor hashes the extraction instruction (prompt files, or rules + vocabulary) every
30 s. On a change it records an observation of the `prompts` source asset with the new data
version, which marks `llm_extractions` and everything downstream unsynced in the UI, and it
requests `extraction_job`, which re-asks the backend only for cache misses.
"""

import dagster as dg

from assets.extraction import extraction_version
from pipeline.jobs import extraction_job
from pipeline.resources import ExtractorResource, MLflowResource, StorageResource
from pipeline.settings import USER_MLFLOW_TRACKING_URI

PROMPT_VERSION_TAG = "medfilip/prompt_version"


@dg.sensor(job=extraction_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Re-run extraction when a file in prompts/ (or the rules vocabulary) changes.")
def prompt_change_sensor(context: dg.SensorEvaluationContext, extractor: ExtractorResource):
    version = extraction_version(extractor)
    if version == context.cursor:
        return dg.SkipReason(f"prompt version {version} unchanged")
    observation = dg.AssetObservation(asset_key="prompts", tags={"dagster/data_version": version},
                                      metadata={"prompt_version": version, "backend": extractor.backend})
    # First tick after switching on: only re-run if the last extraction used another version.
    last_used = last_extraction_version(context.instance)
    if context.cursor is None and last_used == version:
        return dg.SensorResult(asset_events=[observation], cursor=version)
    context.log.info(f"prompt version {context.cursor or last_used} -> {version}: re-running extraction")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"prompt-{version}", tags={PROMPT_VERSION_TAG: version})],
        asset_events=[observation],
        cursor=version,
    )


def last_extraction_version(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(dg.AssetKey("llm_extractions"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("prompt_version")
    return str(value.value)[:16] if value is not None else None


nightly_extraction_schedule = dg.ScheduleDefinition(
    name="nightly_extraction_check",
    job=extraction_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly re-extraction check: with nothing changed it makes zero backend calls.",
)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Mark runs whose `medfilip` process died as failed, freeing their pool slots "
                       "and ending their MLflow runs as KILLED.")
def dead_run_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, mlflow_tracking: MLflowResource):
    from pipeline.run_health import sweep_dead_runs

    tracking_uri = mlflow_tracking.tracking_uri or USER_MLFLOW_TRACKING_URI or storage.layout().mlflow_tracking_uri
    dead = sweep_dead_runs(context.instance, tracking_uri)
    if dead:
        context.log.warning(f"marked {len(dead)} dead run(s) failed: {', '.join(dead)}")
    return dg.SkipReason(f"{len(dead)} dead run(s) cleaned" if dead else "no dead runs")
