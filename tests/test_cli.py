"""The `medfilip` command line as a user types it."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cli import main


def medfilip(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("medfilip"))
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)


def test_corpus_command_writes_a_mimic_layout_archive(tmp_path):
    done = medfilip("corpus", "--out", str(tmp_path / "c"), "--studies", "6", "--seed", "4", "--image-size", "64")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["studies"] == 6 and summary["images"] >= 6
    assert len(list((tmp_path / "c" / "files").rglob("*.dcm"))) == summary["images"]
    assert (tmp_path / "c" / "manifest.json").is_file()
    assert "it/s" not in done.stderr  # no progress bar when the output is not a terminal


def test_run_command_rematerialises_one_stage_for_one_shard(home, tmp_path, monkeypatch, capsys):
    from corpus.generate import generate_corpus

    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # restored after the test
    generate_corpus(home / "corpus", studies=10, seed=5, image_size=64, eval_images=0)
    shard = sorted(p.name for p in (home / "corpus" / "files").iterdir())[0]
    assert main(["run", "reports", "--partition", shard, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["succeeded"] == 1 and list(summary["rows"]) == ["reports"]
    assert pq.read_table(home / "data" / "reports" / f"{shard}.parquet").num_rows == summary["rows"]["reports"]
    assert not (home / "data" / "dicom_index").exists()  # upstream untouched: only what was named ran


def test_unknown_target_is_a_clear_error(home, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    assert main(["run", "no_such_asset"]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'no_such_asset'" in err and "Traceback" not in err
    assert not home.exists()  # refused before the data root was touched
