"""Stream training progress back to Dagster when `python -m training` runs under the
`pretrained_model` asset (Dagster Pipes). Standalone runs never import Dagster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"

Callback = Callable[[str, int, Mapping[str, float]], None]


@contextlib.contextmanager
def pipes_callback(is_main: bool) -> Iterator[Callback | None]:
    """A metrics callback that logs each epoch (and every logged step) through Pipes, or None
    when not launched by Dagster or not rank 0."""
    if not is_main or PIPES_ENV not in os.environ:
        yield None
        return
    from dagster_pipes import open_dagster_pipes  # ships with dagster, tiny, no dagster import

    with open_dagster_pipes() as pipes:
        def report(kind: str, step: int, metrics: Mapping[str, float]) -> None:
            shown = {k: round(float(v), 4) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not k.startswith("auc/")}
            pipes.log.info(f"[{kind} {step}] {shown}")
            if kind == "epoch":
                pipes.report_custom_message({"kind": kind, "step": step, **shown})

        yield report
