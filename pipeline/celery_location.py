"""The code location for Celery workers: the same assets, jobs and resources as
`pipeline.definitions`, with every step sent to a Celery queue (dagster-celery) instead of a
subprocess of the run. Workers import this module to rebuild the job of each step they take.

    workspace: python_module: pipeline.celery_location
    worker:    celery -A dagster_celery.app worker -Q dagster  (broker/backend in dagster_celery_config)

Run config: `execution: {config: {broker: redis://host:6379/0, backend: redis://host:6379/1}}`.
The instance (deploy/dagster.yaml, PostgreSQL) and the data root must be shared by every
machine: steps hand each other paths, never in-memory values. See docs/operations.md.
"""

import dagster as dg
from dagster_celery import celery_executor

from pipeline.definitions import defs as local_defs

defs = dg.Definitions.merge(local_defs, dg.Definitions(executor=celery_executor))
