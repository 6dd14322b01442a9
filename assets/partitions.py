"""Partitions: shards of the archive, subject-folder prefixes (ingestion/layout.py).

Dynamic, because which of the ~1,000 prefixes an archive holds is only known by looking, and a
new one appears when a new subject's study arrives; `medfilip run` and `archive_arrival_sensor`
register them.
"""

import dagster as dg

from assets.resources import ArchiveResource, StorageResource
from ingestion.layout import PARTITION_DIGITS, archive_problem, archive_shards

shard_partitions = dg.DynamicPartitionsDefinition(name="archive_shards")


def discover_shards(storage: StorageResource, archive: ArchiveResource, digits: int = PARTITION_DIGITS) -> list[str]:
    """Shards present in the image and report trees (reports may live in a separate tree)."""
    roots = {archive.image_root(storage), archive.reports_root(storage)}
    return sorted({shard for root in roots if not archive_problem(root) for shard in archive_shards(root, digits)})


def register_shards(instance: dg.DagsterInstance, shards: list[str]) -> list[str]:
    """Add the shards the instance does not know yet as partitions; returns those added."""
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    new = [shard for shard in shards if shard not in known]
    if new:
        instance.add_dynamic_partitions(shard_partitions.name, new)
    return new


def shard_digits(instance: dg.DagsterInstance, requested: int | None) -> int:
    """The granularity to discover shards at: mixing p10 with p1004 would count studies twice,
    so an instance keeps the one its first shards were registered with."""
    if requested is not None:
        return requested
    known = instance.get_dynamic_partitions(shard_partitions.name)
    return max(set(map(len, known)), key=[len(k) for k in known].count) - 1 if known else PARTITION_DIGITS
