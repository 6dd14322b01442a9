"""Jobs: named selections users launch from the UI or `medfilip run`."""

import dagster as dg

from assets.ingestion import shard_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=shard_partitions,
    description="Index, decode and parse one shard (pNN folder) of the archive.",
)

# Extraction and everything that derives from its triplets; re-run when a prompt changes.
extraction_job = dg.define_asset_job(
    "extraction_job",
    # Observing `prompts` first records the prompt version this extraction used.
    selection=dg.AssetSelection.assets("prompts") | dg.AssetSelection.assets("llm_extractions").downstream(),
    description="Re-extract triplets (only cache misses reach the backend) and rebuild downstream.",
)

# Everything after ingestion, in one run: what `make demo` launches once the shards are in.
model_job = dg.define_asset_job(
    "model_job",
    selection=dg.AssetSelection.assets("prompts")
    | dg.AssetSelection.groups("extraction", "knowledge", "training", "evaluation"),
    description="Extraction, knowledge and SSM, pre-training and evaluation from the ingested shards.",
)

jobs = [ingestion_job, extraction_job, model_job]
