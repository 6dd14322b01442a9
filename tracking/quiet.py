"""Library chatter a user cannot act on, silenced by name, nothing broader.

MLflow announces its own bookkeeping at INFO (creating the SQLite tables, validating the input
example, registering a version) and draws a download progress bar in a step's log; the pipeline
reports the outcome itself (the run, the model version), so those lines go. Warnings stay on.
"""

from __future__ import annotations

import logging
import os

MLFLOW_BOOKKEEPING_LOGGERS = (
    "mlflow.store.db.utils",              # "Creating initial MLflow database tables..."
    "alembic.runtime.migration",          # the schema migrations behind it
    "mlflow.pyfunc",                      # "Validating input example against model signature"
    "mlflow.models.model",                # model logging notes
    "mlflow.tracking._model_registry",    # "Successfully registered model" / "Created version"
    "mlflow.store.model_registry",
)


def quiet_mlflow() -> None:
    """Call before the first MLflow operation of a process (idempotent)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in MLFLOW_BOOKKEEPING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
