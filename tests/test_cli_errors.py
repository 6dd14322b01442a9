"""Every mistake a new user made with `medfilip` gets one or two lines naming the cause and the
fix, with the traceback only under --debug (issue 16). Run as the user types it: the real
executable, a real data root, a real MLflow SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import prepare_home
from tracking.store import resolve_tracking_uri


def medfilip(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("medfilip"))
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """stderr without the data-root announcement."""
    return [line for line in done.stderr.splitlines() if not line.startswith("medfilip: data root")]


def assert_short_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    lines = error_lines(done)
    assert done.returncode != 0, done.stdout
    assert 1 <= len(lines) <= 2, done.stderr
    assert "Traceback" not in done.stderr
    text = "\n".join(lines)
    for needle in needles:
        assert needle in text, text


@pytest.fixture
def user(tmp_path: Path) -> tuple[Path, dict]:
    """A working folder outside the repository, and an environment without MEDFILIP_HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDFILIP_") and k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env["MEDFILIP_PATIENT_SALT"] = "cli-errors"
    work = tmp_path / "work"
    work.mkdir()
    return work, env


@pytest.fixture
def registered(tmp_path: Path) -> Path:
    """A data root whose MLflow store holds model versions 1 and 2 of `medfilip`, each from a
    run with a lineage.json artifact."""
    import mlflow
    from mlflow.tracking import MlflowClient

    home = tmp_path / "registered"
    lay = prepare_home(home, set_dagster_home=False)
    record = tmp_path / "lineage.json"
    record.write_text('{"checkpoint": "x.pt", "checkpoint_sha256": "ab", "mlflow_run_id": "r", '
                      '"dagster_run_id": "d", "inputs": []}')
    mlflow.set_tracking_uri(resolve_tracking_uri(None, lay.home))
    client = MlflowClient()
    experiment = client.create_experiment("medfilip", artifact_location=lay.mlflow_artifacts.as_uri())
    client.create_registered_model("medfilip")
    for _ in range(2):
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(record))
        client.create_model_version("medfilip", source=f"{run.info.artifact_uri}", run_id=run.info.run_id)
        client.set_terminated(run.info.run_id)
    return home


def archive_home(tmp_path: Path, env: dict) -> dict:
    """A data root whose default archive holds the shards p10 and p11."""
    from tests.archive_factory import build_archive

    build_archive(tmp_path / "h" / "corpus")
    return {**env, "MEDFILIP_HOME": str(tmp_path / "h")}


def test_unknown_partition_lists_the_valid_ones(user, tmp_path):
    work, env = user
    done = medfilip("run", "reports", "--partition", "p99", cwd=work, env=archive_home(tmp_path, env))
    assert_short_error(done, "unknown partition p99: no such shard in the archive", "use one of p10, p11")


def lineage(user, registered, target: str):
    """`medfilip lineage TARGET` over the home with registered model versions 1 and 2."""
    work, env = user
    return medfilip("lineage", target, cwd=work, env={**env, "MEDFILIP_HOME": str(registered)})


def test_unknown_model_version_lists_the_existing_ones(user, registered):
    done = lineage(user, registered, "99")
    assert_short_error(done, "model version 99", "existing versions: 1, 2")


def test_an_existing_model_version_prints_its_lineage(user, registered):
    done = lineage(user, registered, "2")
    assert done.returncode == 0, done.stderr
    assert "checkpoint  x.pt" in done.stdout


def test_unknown_run_id_says_what_it_is_not(user, registered):
    done = lineage(user, registered, "deadbeef")
    assert_short_error(done, "'deadbeef' is not a path, a model version or an MLflow run id", "(1, 2)")


def test_a_path_that_does_not_exist_is_named_as_a_path(user, registered):
    done = lineage(user, registered, "missing.pt")
    assert_short_error(done, "missing.pt does not exist")


def test_openai_backend_without_its_key_is_one_line_before_any_run(user, tmp_path):
    work, env = user
    env = {**env, "MEDFILIP_HOME": str(tmp_path / "h"), "MEDFILIP_EXTRACTOR": "openai",
           "MEDFILIP_LLM_MODEL": "some-llm", "MEDFILIP_LLM_BASE_URL": "http://127.0.0.1:9/v1",
           "MEDFILIP_LLM_API_KEY_ENV": "NO_SUCH_KEY_VARIABLE"}
    done = medfilip("run", "llm_extractions", cwd=work, env=env)
    assert_short_error(done, "NO_SUCH_KEY_VARIABLE", "not set", "MEDFILIP_EXTRACTOR=rules")
    assert not (tmp_path / "h" / "data" / "llm_extractions").exists()


def test_debug_shows_the_traceback(user, tmp_path):
    work, env = user
    done = medfilip("run", "reports", "--partition", "p99", "--debug", cwd=work, env=archive_home(tmp_path, env))
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "UserError" in done.stderr


def test_unconfigured_data_root_is_never_created_silently(user):
    work, env = user
    done = medfilip("lineage", "1", cwd=work, env=env)
    assert_short_error(done, "no data root configured", "medfilip init")
    assert not (work / ".medfilip").exists()


def test_init_creates_the_data_root_and_a_settings_file_that_later_commands_use(user):
    work, env = user
    done = medfilip("init", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    assert (work / ".medfilip" / "dagster" / "dagster.yaml").is_file()
    assert "home: .medfilip" in (work / "medfilip.yaml").read_text()
    again = medfilip("lineage", "1", cwd=work, env=env)
    assert f"data root {work / '.medfilip'} (from {work / 'medfilip.yaml'})" in again.stderr
    assert_short_error(again, "no MLflow store")


# --- a step that fails for a reason nobody foresaw: its cause in the last line (issue 22) ---------

def failed_run(done: subprocess.CompletedProcess, step: str) -> str:
    """The last stderr line, after checking the run failed in a few lines without a trace or JSON."""
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(lines) <= 5, done.stderr
    assert "Traceback" not in done.stderr and "Stack Trace" not in done.stderr and "{" not in done.stdout
    assert lines[-1].startswith(f"FAILED {step}"), done.stderr
    return lines[-1]


def test_a_corrupt_upstream_parquet_file_is_named_with_the_command_that_rewrites_it(user, tmp_path):
    work, env = user
    env = archive_home(tmp_path, env)
    index = tmp_path / "h" / "data" / "dicom_index" / "p11.parquet"
    index.parent.mkdir(parents=True)
    index.write_bytes(b"PAR1 not really")
    line = failed_run(medfilip("run", "cxr_images", "--partition", "p11", cwd=work, env=env), "cxr_images [p11]")
    assert line.startswith(f"FAILED cxr_images [p11]: ArrowInvalid: Could not open Parquet input source '{index}'"), line
    assert "(raised at assets/ingestion.py:" in line
    assert line.endswith("; materialise it: medfilip run dicom_index --partition p11"), line


def test_an_exception_inside_a_library_names_its_type_message_and_where(user, tmp_path):
    """An index written by something else (no dicom_id column): a KeyError deep in decoding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work, env = user
    env = archive_home(tmp_path, env)
    index = tmp_path / "h" / "data" / "dicom_index" / "p11.parquet"
    index.parent.mkdir(parents=True)
    pq.write_table(pa.table({"source_path": ["files/p11/p11000001/s51000001/rg1uncr.dcm"], "shard": ["p11"]}), index)
    line = failed_run(medfilip("run", "cxr_images", "--partition", "p11", cwd=work, env=env), "cxr_images [p11]")
    assert line.startswith("FAILED cxr_images [p11]: KeyError: 'dicom_id' (raised at ingestion/images.py:"), line


def test_an_unwritable_output_folder_names_the_os_error_and_the_path(user, tmp_path):
    work, env = user
    env = archive_home(tmp_path, env)
    (tmp_path / "h" / "data").mkdir(parents=True)
    (tmp_path / "h" / "data" / "dicom_index").write_text("a file where the folder should be")
    line = failed_run(medfilip("run", "dicom_index", "--partition", "p11", cwd=work, env=env), "dicom_index [p11]")
    assert line.startswith("FAILED dicom_index [p11]: "), line
    assert "Error: [Errno" in line and str(tmp_path / "h" / "data" / "dicom_index") in line, line


def test_a_dead_llm_endpoint_is_one_line_after_the_steps_own_log(user, tmp_path):
    import socket

    work, env = user
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    home = tmp_path / "h"
    env = {**archive_home(tmp_path, env), "MEDFILIP_EXTRACTOR": "openai", "MEDFILIP_LLM_MODEL": "some-llm",
           "MEDFILIP_LLM_BASE_URL": url, "MEDFILIP_LLM_API_KEY_ENV": "CLI_TEST_KEY", "CLI_TEST_KEY": "sk-test"}
    assert medfilip("run", "reports", cwd=work, env=env).returncode == 0
    line = failed_run(medfilip("run", "llm_extractions", cwd=work, env=env), "llm_extractions")
    assert f"LLM endpoint unavailable: 8 requests in a row to {url} failed (last: APIConnectionError" in line
    assert not (home / "data" / "llm_extractions" / "llm_extractions.parquet").exists()


def test_json_and_debug_show_the_summary_and_the_trace(user, tmp_path):
    import json

    work, env = user
    env = archive_home(tmp_path, env)
    index = tmp_path / "h" / "data" / "dicom_index" / "p11.parquet"
    index.parent.mkdir(parents=True)
    index.write_bytes(b"not parquet")
    done = medfilip("run", "cxr_images", "--partition", "p11", "--json", "--debug", cwd=work, env=env)
    assert done.returncode == 1
    [failure] = json.loads(done.stdout)["failures"]
    assert (failure["step"], failure["partition"], failure["exception"]) == ("cxr_images", "p11", "ArrowInvalid")
    assert failure["location"].startswith("assets/ingestion.py:")
    assert "Stack Trace" in done.stderr  # Dagster's own console, as without medfilip
