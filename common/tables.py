"""Rows as a GitHub-flavoured markdown table (Dagster metadata, results files, benchmarks)."""
from __future__ import annotations

from collections.abc import Sequence


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, limit: int | None = None,
                   max_cell: int | None = None) -> str:
    """One line per row (at most `limit`, then a count of the rest); cells escaped for markdown."""
    if not rows:
        return "_none_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    shown = rows if limit is None else rows[:limit]
    lines += ["| " + " | ".join(_cell(row.get(c), max_cell) for c in columns) + " |" for row in shown]
    if len(rows) > len(shown):
        lines.append(f"\n_{len(rows) - len(shown)} more rows_")
    return "\n".join(lines)


def _cell(value, max_cell: int | None) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    if max_cell is not None and len(text) > max_cell:
        return text[:max_cell - 3] + "..."
    return text
