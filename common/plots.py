"""matplotlib for files only: every figure here becomes a PNG, Dagster metadata or an MLflow
artifact, never a window, and a worker process has no display."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (set once, here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
