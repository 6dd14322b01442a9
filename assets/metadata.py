"""Small helpers turning tables into the Dagster metadata a user checks first."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import dagster as dg
import pyarrow as pa

from common.tables import markdown_table


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None, limit: int = 20) -> dg.MetadataValue:
    return dg.MetadataValue.md(markdown_table(rows, columns, limit=limit, max_cell=80))


def counts(values: Iterable, name: str = "value") -> dg.MetadataValue:
    tally = Counter(v if v is not None else "(none)" for v in values)
    return md_table([{name: k, "count": n} for k, n in tally.most_common()], [name, "count"])


def preview(table: pa.Table, columns: Sequence[str], limit: int = 5) -> dg.MetadataValue:
    return md_table(table.select(list(columns)).slice(0, limit).to_pylist(), columns, limit)


def format_interval(interval, digits: int = 3) -> str:
    """(0.8917, 0.9231) -> "0.892–0.923"; "n/a" when there is no interval (too few positives)."""
    try:
        low, high = (float(x) for x in interval)
    except (TypeError, ValueError):
        return "n/a"
    if low != low or high != high:
        return "n/a"
    return f"{low:.{digits}f}–{high:.{digits}f}"


def rounded(metadata: dict, digits: int = 4) -> dict:
    """Floats to `digits` significant digits for display (the UI shows all 17 otherwise; a small
    error such as 3.2e-05 keeps its size); other values as they are."""
    return {k: float(f"{v:.{digits}g}") if isinstance(v, float) else v for k, v in metadata.items()}


def first_reasons(quarantine: pa.Table, n: int = 3) -> str:
    reasons = quarantine.column("reason").to_pylist()
    return "; ".join(list(dict.fromkeys(r[:100] for r in reasons))[:n]) if reasons else "none"
