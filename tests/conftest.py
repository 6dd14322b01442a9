import os
import tempfile
from pathlib import Path

import pytest

# One closing line when a plain run skipped tests for a missing service (tests/servers.py).
from tests.servers import pytest_terminal_summary  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
# An empty settings file: a medfilip.yaml in the folder the suite runs from (a developer's own,
# written by `medfilip init`) must not point the tests at a real archive or LLM.
_EMPTY_SETTINGS = Path(tempfile.mkdtemp(prefix="medfilip-tests-")) / "medfilip.yaml"
_EMPTY_SETTINGS.write_text("# no settings: tests choose their own\n")
os.environ["MEDFILIP_CONFIG"] = str(_EMPTY_SETTINGS)


def _forget_callers_settings() -> None:
    """The caller's settings variables do not reach the tests either: `make test` exports
    MEDFILIP_HOME, and a developer may have MLFLOW_TRACKING_URI or an LLM endpoint set."""
    from pipeline.settings import ENVIRONMENT

    for variable, _ in ENVIRONMENT.values():
        os.environ.pop(variable, None)
    os.environ.pop("MEDFILIP_PATIENT_SALT", None)


_forget_callers_settings()


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI, a user setting here: a test that calls it
    directly must not point the next test's settings at its own store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MEDFILIP_HOME with a fixed patient salt."""
    root = tmp_path / "home"
    monkeypatch.setenv("MEDFILIP_HOME", str(root))
    monkeypatch.setenv("MEDFILIP_PATIENT_SALT", "test-salt")
    return root


@pytest.fixture
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
