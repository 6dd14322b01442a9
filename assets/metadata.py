"""Small helpers turning tables into the Dagster metadata a user checks first."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import dagster as dg
import pyarrow as pa


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None, limit: int = 20) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_none_")
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:limit]:
        cells = (_cell(row.get(c)) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows_")
    return dg.MetadataValue.md("\n".join(lines))


def counts(values: Iterable, name: str = "value") -> dg.MetadataValue:
    tally = Counter(v if v is not None else "(none)" for v in values)
    return md_table([{name: k, "count": n} for k, n in tally.most_common()], [name, "count"])


def preview(table: pa.Table, columns: Sequence[str], limit: int = 5) -> dg.MetadataValue:
    return md_table(table.select(list(columns)).slice(0, limit).to_pylist(), columns, limit)


def _cell(value) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."
