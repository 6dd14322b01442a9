"""Jobs: named selections users launch from the UI or `medfilip run`."""

import dagster as dg

from assets.ingestion import shard_partitions

ingestion_job = dg.define_asset_job(
    "ingestion_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=shard_partitions,
    description="Index, decode and parse one shard (pNN folder) of the archive.",
)

jobs = [ingestion_job]
