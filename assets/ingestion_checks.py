"""The ingestion assets' check results, each failed one naming what failed and where: the shard,
the file, the column, the kind of identifier (never its value), the first reasons."""

from pathlib import Path

import dagster as dg
import pyarrow as pa

from assets.metadata import first_reasons, md_table
from assets.resources import StorageResource
from ingestion.identifiers import IdentifierSignatures, describe_leaks, find_leaks


def leaks_in(storage: StorageResource, paths: list[Path], signatures: IdentifierSignatures) -> list[dict]:
    """find_leaks per file, each hit naming its file by its path in the data root
    (data/dicom_index/p10.parquet, data/quarantine/index/p10.parquet: one basename, two tables)."""
    return [dict(hit, file=shown_path(storage, path)) for path in paths for hit in find_leaks([path], signatures)]


def shown_path(storage: StorageResource, path: Path) -> str:
    """`path` as a person reads it: relative to the data root when inside it."""
    home = storage.layout().home
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def leak_check(shard: str, leaks: list[dict], checked: int) -> dg.AssetCheckResult:
    """Kind, file, column and row of each leak, and the fix when the archive's folder names are
    the source; never a value."""
    return dg.AssetCheckResult(
        check_name="no_identifier_leaks", passed=not leaks,
        description=f"shard {shard}: {describe_leaks(leaks)}" if leaks else None,
        metadata={"identifier_values_checked": checked, "leaks": md_table(leaks)})


def quarantine_rate_check(shard: str, quarantine: pa.Table, total: int, limit: float, floor: int,
                          storage: StorageResource, quarantine_path: Path) -> dg.AssetCheckResult:
    """Fails above `limit`; a shard of fewer than `floor` files fails only when none of them is
    usable and warns otherwise (two new files, one broken, is no broken copy of the archive)."""
    quarantined = quarantine.num_rows
    rate = quarantined / total if total else 0.0
    metadata = {"rate": round(rate, 4), "limit": limit, "min_files": floor, "quarantined": quarantined,
                "files": total}
    if rate <= limit:
        return dg.AssetCheckResult(check_name="quarantine_rate", passed=True, metadata=metadata)
    description = (f"shard {shard}: {quarantined} of {total} files quarantined ({rate:.0%} > max_quarantine_rate "
                   f"{limit:g}); first reasons: {first_reasons(quarantine)}; all in {shown_path(storage, quarantine_path)}")
    small = total < floor and quarantined < total
    if small:
        description += (f"; a warning only: fewer than {floor} files (quarantine_rate_min_files), "
                        "and some are usable")
    return dg.AssetCheckResult(check_name="quarantine_rate", passed=False, description=description,
                               severity=dg.AssetCheckSeverity.WARN if small else dg.AssetCheckSeverity.ERROR,
                               metadata=metadata)
