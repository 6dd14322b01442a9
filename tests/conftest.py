import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


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
