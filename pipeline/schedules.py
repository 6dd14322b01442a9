"""Schedules: for those who prefer a clock to the prompt-change sensor."""

import dagster as dg

from pipeline.jobs import extraction_job

nightly_extraction_schedule = dg.ScheduleDefinition(
    name="nightly_extraction_check",
    job=extraction_job,
    cron_schedule="0 2 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly re-extraction check: with nothing changed it makes zero backend calls.",
)
