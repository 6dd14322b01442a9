"""Plots embedded in Dagster metadata as inline PNG markdown (no artifact server needed)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from pathlib import Path

from common.plots import pyplot

plt = pyplot()


def png_markdown(png: bytes | Path, alt: str) -> str:
    data = Path(png).read_bytes() if isinstance(png, Path | str) else png
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})"


def figure_markdown(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return png_markdown(buffer.getvalue(), alt)


def bar_chart_markdown(counts: Mapping[str, int], title: str) -> str:
    items = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:30]
    if not items:
        return "_nothing to plot_"
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(items) + 1))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4a7ab5")
    ax.set_title(title)
    return figure_markdown(fig, title)
