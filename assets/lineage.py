"""Lineage entries read from the Dagster instance: the latest materialisation (or observation) of
each ancestor asset, per partition. The record's format is tracking.lineage's."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from tracking.lineage import lineage_entry

# The chain behind a pre-trained model, nearest first.
MODEL_ANCESTORS = (
    "ssm", "text_embeddings", "training_texts", "knowledge_base", "triplets", "llm_extractions",
    "prompts", "reports", "cxr_images", "dicom_index",
)
# What pretrained_model logs as its MLflow dataset inputs.
TRAINING_INPUTS = ("cxr_images", "training_texts", "ssm")


def collect_lineage(instance: dg.DagsterInstance, asset_keys: Iterable[str] = MODEL_ANCESTORS) -> list[dict]:
    """One entry per asset (and partition): latest materialisation or observation."""
    entries = []
    for key in asset_keys:
        records = _latest_per_partition(instance, dg.AssetKey(key))
        for partition, record in sorted(records.items(), key=lambda kv: kv[0] or ""):
            entries.append(_entry(key, partition, record))
    return entries


def _latest_per_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str | None, object]:
    latest: dict[str | None, object] = {}
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        result = fetch(dg.AssetRecordsFilter(asset_key=key), limit=1000, ascending=False)
        for record in result.records:
            latest.setdefault(record.partition_key, record)
        if latest:
            break
    return latest


def _entry(key: str, partition: str | None, record) -> dict:
    event = record.event_log_entry
    data = event.dagster_event.event_specific_data
    asset_event = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
    metadata = {k: v.value for k, v in (asset_event.metadata if asset_event else {}).items()}
    return lineage_entry(key, partition, event.run_id, event.timestamp, metadata,
                         getattr(asset_event, "data_version", None) if asset_event is not None else None)
