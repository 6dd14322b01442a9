"""Digests, one meaning each: an asset's dataset digest (what MLflow inputs, Dagster metadata and
`medfilip lineage` show) and an evaluation set's content digest (what was scored)."""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

# Each lineage entry's own digest, in this order of preference: the file's sha256 is what the
# Dagster metadata, `medfilip lineage` and the MLflow dataset all show.
PRIMARY_DIGEST_KEYS = ("sha256", "digest", "texts_sha256", "model_digest", "prompt_version")


def entry_digest(entry: Mapping) -> str:
    """One lineage entry's digest (16 hex), as `medfilip lineage` prints it."""
    digests = entry.get("digests", {})
    value = next((digests[k] for k in PRIMARY_DIGEST_KEYS if digests.get(k)), entry.get("data_version", ""))
    return str(value)[:16]


def entries_by_asset(entries: list[Mapping]) -> dict[str, list[Mapping]]:
    grouped: dict[str, list[Mapping]] = {}
    for entry in entries:
        grouped.setdefault(entry["asset"], []).append(entry)
    return grouped


def dataset_digest(entries: list[Mapping]) -> str:
    """The digest of one dataset: its entry's digest, or for a partitioned asset a hash over its
    partitions' digests. The same function serves MLflow, Dagster metadata and lineage."""
    if len(entries) == 1:
        return entry_digest(entries[0])
    lines = sorted(f"{e.get('partition') or ''}:{entry_digest(e)}" for e in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def dataset_digests(entries: list[Mapping]) -> dict[str, str]:
    """Per asset the one digest that MLflow's dataset inputs and the Dagster metadata show."""
    return {asset: dataset_digest(group) for asset, group in entries_by_asset(entries).items()}


def eval_set_digest(data: Any) -> str:
    """16 hex over an evaluation set's image ids, categories and labels: what was scored."""
    import numpy as np

    digest = hashlib.sha256()
    digest.update("\n".join(map(str, data.image_ids)).encode())
    digest.update(b"\0" + "\n".join(map(str, data.categories)).encode())
    digest.update(b"\0" + np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:16]
