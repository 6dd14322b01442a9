"""Asset checks that stand apart from their asset's step (the others are check_specs of the asset
that computes them, in the same step, because they read what that step just wrote)."""

import dagster as dg
import pyarrow.parquet as pq

from assets.resources import StorageResource
from knowledge.base import load_knowledge, missing_descriptions


@dg.asset_check(asset="knowledge_base", additional_deps=["triplets"],
                description="Every category used by triplets has a visual description.")
def every_triplet_category_described(storage: StorageResource) -> dg.AssetCheckResult:
    used = set(pq.read_table(storage.asset_path("triplets", "triplets.parquet"), columns=["category"])
               .column("category").to_pylist())
    missing = missing_descriptions(load_knowledge(), sorted(used))
    return dg.AssetCheckResult(passed=not missing, metadata={"categories_used": len(used),
                                                            "missing": ", ".join(missing) or "none"},
                               description=f"{len(missing)} categories used by triplets have no visual description "
                                           f"in the knowledge base: {', '.join(missing[:10])}; add them to "
                                           "knowledge/descriptions.yaml" if missing else None)
