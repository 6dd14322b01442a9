"""One settings file names a real archive (issue 16): `medfilip.yaml` in the working folder, or
given with --config, points the CLI and the Dagster resources at a MIMIC-CXR-JPG-layout archive,
a separate reports tree and a data root; an environment variable wins over the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.errors import UserError
from pipeline.settings import ENVIRONMENT, load_settings


def medfilip(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("medfilip"))
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFILIP_") and k != "DAGSTER_HOME"}
    return {**env, "MEDFILIP_PATIENT_SALT": "config-file"}


@pytest.fixture(scope="module")
def jpg_archive(tmp_path_factory) -> tuple[Path, Path]:
    """A MIMIC-CXR-JPG-layout archive, its reports moved to a separate tree as in MIMIC-CXR."""
    from corpus.generate import generate_corpus

    root = tmp_path_factory.mktemp("archive")
    images, reports = root / "mimic-cxr-jpg", root / "mimic-cxr-reports"
    generate_corpus(images, studies=6, seed=3, image_size=64, image_format="jpg", eval_images=0)
    for report in (images / "files").rglob("*.txt"):
        target = reports / report.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(report, target)
    return images, reports


def test_a_settings_file_points_the_pipeline_at_a_mimic_cxr_jpg_archive(tmp_path, jpg_archive, clean_env):
    images, reports = jpg_archive
    work = tmp_path / "work"
    work.mkdir()
    (work / "medfilip.yaml").write_text(
        "home: data-root\n"
        "archive:\n"
        f"  root: {images}\n"
        "  image_format: jpg\n"
        f"  metadata_csv: {images / 'mimic-cxr-2.0.0-metadata.csv'}\n"
        f"  report_root: {reports}\n")
    shard = sorted(p.name for p in (images / "files").iterdir())[0]
    expected_images = len(list((images / "files" / shard).rglob("*.jpg")))

    done = medfilip("run", "dicom_index", "--partition", shard, cwd=work, env=clean_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"data root {work / 'data-root'} (from {work / 'medfilip.yaml'})" in done.stderr
    assert "Warning" not in done.stderr, done.stderr  # no BetaWarning (or any other) per run
    index = pq.read_table(work / "data-root" / "data" / "dicom_index" / f"{shard}.parquet")
    assert index.num_rows == expected_images > 0
    assert all(p.endswith(".jpg") for p in index.column("source_path").to_pylist())

    done = medfilip("run", "reports", "--partition", shard, "--json", cwd=work, env=clean_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["rows"]["reports"] == len(list((reports / "files" / shard).rglob("*.txt")))


def test_config_option_finds_the_file_from_any_folder_and_the_environment_wins(tmp_path, jpg_archive, clean_env):
    images, _ = jpg_archive
    config = tmp_path / "elsewhere" / "site.yaml"
    config.parent.mkdir()
    config.write_text(f"home: {tmp_path / 'from-file'}\narchive:\n  root: {images}\n  image_format: jpg\n")
    work = tmp_path / "work"
    work.mkdir()
    done = medfilip("init", "--config", str(config), cwd=work, env=clean_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "from-file" / "dagster" / "dagster.yaml").is_file()
    assert not (work / "medfilip.yaml").exists()  # a file was named: init writes none here

    env = {**clean_env, "MEDFILIP_HOME": str(tmp_path / "from-env")}
    done = medfilip("init", "--config", str(config), cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "from-env" / "dagster" / "dagster.yaml").is_file()


def test_every_setting_reads_from_its_environment_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {"MEDFILIP_ARCHIVE_IMAGE_FORMAT": "JPG", "MEDFILIP_TRAINING_OVERRIDES": '{"epochs": 2}',
               "MEDFILIP_LLM_CONCURRENCY": "3", "MEDFILIP_WEIGHTS": str(tmp_path / "w"),
               "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    settings = load_settings(environ=environ)
    assert settings.archive.image_format == "jpg"
    assert settings.training.overrides == {"epochs": 2}
    assert settings.extractor.set_values() == {"concurrency": 3}
    assert settings.training.weights_dir == tmp_path / "w"
    assert settings.mlflow.tracking_uri == "http://mlflow:5000"
    assert (settings.home, settings.home_source) == (tmp_path / ".medfilip", "default ./.medfilip")
    assert len({env for env, _ in ENVIRONMENT.values()}) == len(ENVIRONMENT)  # one variable per key


def test_the_environment_wins_over_the_file(tmp_path):
    path = tmp_path / "medfilip.yaml"
    path.write_text("home: from-file\nextractor:\n  concurrency: 2\n  backend: openai\n")
    settings = load_settings(path, environ={"MEDFILIP_LLM_CONCURRENCY": "5"})
    assert settings.extractor.concurrency == 5 and settings.extractor.backend == "openai"
    assert (settings.home, settings.home_source) == (tmp_path / "from-file", str(path))
    settings = load_settings(path, environ={"MEDFILIP_HOME": str(tmp_path / "env")})
    assert (settings.home, settings.home_source) == (tmp_path / "env", "MEDFILIP_HOME")


def test_a_mistake_in_the_file_names_the_key_and_the_fix(tmp_path):
    path = tmp_path / "medfilip.yaml"
    path.write_text("archive:\n  rot: /data\n")
    with pytest.raises(UserError, match=r"(?s)unknown setting 'archive.rot'.*archive.root"):
        load_settings(path, environ={})
    path.write_text("archive:\n  image_format: png\n")
    with pytest.raises(UserError, match=r"archive.image_format = 'png' is invalid"):
        load_settings(path, environ={})
    path.with_name("empty.yaml").write_text("")
    with pytest.raises(UserError, match=r"\$MEDFILIP_TRAINING_NPROC_PER_NODE: setting training.nproc_per_node"):
        load_settings(path.with_name("empty.yaml"), environ={"MEDFILIP_TRAINING_NPROC_PER_NODE": "two"})


def test_relative_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "site" / "medfilip.yaml"
    path.parent.mkdir()
    path.write_text("home: ../root\nextractor:\n  prompt_dir: prompts/mine\n")
    settings = load_settings(path, environ={})
    assert settings.home == tmp_path / "root"
    assert settings.extractor.prompt_dir == str(tmp_path / "site" / "prompts" / "mine")


def test_a_resource_field_wins_over_the_file_and_the_environment(tmp_path, monkeypatch):
    """Definitions fill the resources from the settings once; from then on a resource's field (run
    config in the launchpad) is the only override: no resource method reads the environment."""
    from pipeline.definitions import build_definitions

    path = tmp_path / "medfilip.yaml"
    path.write_text(f"home: {tmp_path / 'file-home'}\narchive:\n  root: {tmp_path / 'file-archive'}\n"
                    "extractor:\n  backend: rules\n")
    monkeypatch.setenv("MEDFILIP_ARCHIVE_ROOT", str(tmp_path / "env-archive"))
    defs = build_definitions(load_settings(path))
    storage, archive = defs.resources["storage"], defs.resources["archive"]
    assert archive.image_root(storage) == tmp_path / "env-archive"  # environment over file
    assert storage.layout().home == tmp_path / "file-home"
    chosen = archive.model_copy(update={"root": str(tmp_path / "field-archive")})  # what run config does
    assert chosen.image_root(storage) == tmp_path / "field-archive"
    monkeypatch.setenv("MEDFILIP_ARCHIVE_ROOT", str(tmp_path / "later"))  # read once, never again
    monkeypatch.setenv("MEDFILIP_HOME", str(tmp_path / "later-home"))
    assert archive.image_root(storage) == tmp_path / "env-archive"
    assert storage.layout().home == tmp_path / "file-home"


def test_the_archive_colour_id_rule_and_quarantine_limits_reach_the_archive_resource(tmp_path):
    from typing import get_args

    from ingestion.dicom_index import COLOUR_MODES, ID_RULES, MAX_IMAGE_PIXELS
    from pipeline.definitions import build_definitions
    from pipeline.settings import ArchiveSettings

    assert get_args(ArchiveSettings.model_fields["colour"].annotation) == COLOUR_MODES
    assert get_args(ArchiveSettings.model_fields["id_rule"].annotation) == ("auto", *ID_RULES)
    path = tmp_path / "medfilip.yaml"
    path.write_text("archive:\n  colour: Gray\n  id_rule: study_stem\n  max_quarantine_rate: 0.1\n")
    archive = build_definitions(load_settings(path, environ={})).resources["archive"]
    assert (archive.colour_mode(), archive.configured_id_rule(), archive.max_quarantine_rate,
            archive.quarantine_rate_min_files) == ("grey", "study_stem", 0.1, 20)
    archive = build_definitions(load_settings(path, environ={
        "MEDFILIP_ARCHIVE_COLOUR": "quarantine", "MEDFILIP_ARCHIVE_ID_RULE": "sop_uid",
        "MEDFILIP_ARCHIVE_QUARANTINE_RATE_MIN_FILES": "5"})).resources["archive"]
    assert (archive.colour_mode(), archive.configured_id_rule(), archive.quarantine_rate_min_files) == \
        ("quarantine", "sop_uid", 5)
    path.with_name("empty.yaml").write_text("")
    default = build_definitions(load_settings(path.with_name("empty.yaml"), environ={}))
    assert (default.resources["archive"].colour, default.resources["archive"].id_rule) == ("quarantine", "auto")
    # The image-size limit: the index's own default unless set, then the value set.
    assert default.resources["archive"].max_image_pixels == MAX_IMAGE_PIXELS
    archive = build_definitions(load_settings(path, environ={"MEDFILIP_ARCHIVE_MAX_IMAGE_PIXELS": "250000000"}))
    assert archive.resources["archive"].max_image_pixels == 250_000_000
    with pytest.raises(UserError, match=r"\$MEDFILIP_ARCHIVE_ID_RULE: setting archive.id_rule = 'uuid' is invalid"):
        load_settings(path, environ={"MEDFILIP_ARCHIVE_ID_RULE": "uuid"})
