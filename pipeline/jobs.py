"""Jobs: named selections users launch from the UI or `medfilip run`."""

import dagster as dg

from assets.partitions import shard_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=shard_partitions,
    description="Index, decode and parse one shard (subject-folder prefix, e.g. p1004) of the archive.",
    tags={"medfilip/stage": "ingestion"},  # per-stage run limits in deploy/dagster.yaml
)

# Re-run when a prompt changes: extraction only (cache misses reach the backend); what is
# downstream shows as unsynced until a user re-materialises it, so no model is retrained unasked.
extraction_job = dg.define_asset_job(
    "extraction_job",
    # Observing `prompts` first records the prompt version this extraction used.
    selection=dg.AssetSelection.assets("prompts", "llm_extractions", "triplets", "report_labels"),
    description="Re-extract triplets; only cache misses reach the backend.",
    tags={"medfilip/stage": "extraction"},
)

# Everything after ingestion, in one run: what `make demo` launches once the shards are in.
model_job = dg.define_asset_job(
    "model_job",
    selection=dg.AssetSelection.assets("prompts")
    | dg.AssetSelection.groups("extraction", "knowledge", "training", "evaluation"),
    description="Extraction, knowledge and SSM, pre-training and evaluation from the ingested shards.",
)

jobs = [ingestion_job, extraction_job, model_job]
