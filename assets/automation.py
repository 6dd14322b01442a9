"""How a prompt change reaches everything downstream.

Dagster's staleness is one hop: after a re-extraction only the direct children of what changed
show "unsynced". The cheap derived assets between extraction and the model (triplets, report
labels, training texts, embeddings, SSM) therefore carry an eager automation condition: with
`prompt_downstream_sensor` on, each re-materialises once its inputs have changed, so the chain
settles and `pretrained_model` (never retrained unasked) shows as unsynced with its cause.
"""

import dagster as dg

AC = dg.AutomationCondition

# Dagster's eager(), except that shards of cxr_images never ingested do not count as missing:
# an archive rarely fills all ten pNN folders, and training uses the shards that are there.
DERIVED_FROM_EXTRACTION = (
    AC.in_latest_time_window()
    & (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
    & ~AC.any_deps_missing().ignore(dg.AssetSelection.assets("cxr_images"))
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("eager (missing image shards allowed)")
