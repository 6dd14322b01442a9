"""A plain (non-editable) install carries everything the pipeline reads at run time (issue 16):
the wheel built from this tree, installed with `pip install --target` into an empty folder, runs
`medfilip init`, ingestion and rules extraction from another working folder, and finds the
knowledge base, the prompts and the model configs inside the install, never in the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of a copy of the working tree's files (building in place would write build/ here)."""
    tmp = tmp_path_factory.mktemp("install")
    source, wheels, target = tmp / "source", tmp / "wheels", tmp / "site"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    wheel = next(wheels.glob("medfilip-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


def run_installed(site: Path, cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDFILIP_") and k != "DAGSTER_HOME"}
    environ.update(PYTHONPATH=str(site), MEDFILIP_PATIENT_SALT="packaging", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_ships_the_knowledge_base_and_the_prompts(installed, tmp_path):
    done = run_installed(installed, tmp_path, """
import json
import pipeline
from common.paths import KNOWLEDGE_DIR, PROMPTS_DIR
from extraction.prompts import default_prompt_dir, load_prompt
from extraction.vocabulary import load_vocabulary
from knowledge.base import load_knowledge
from medfilip_model.dual_encoder import list_configs
print(json.dumps({"pipeline": pipeline.__file__, "knowledge": str(KNOWLEDGE_DIR), "prompts": str(PROMPTS_DIR),
                  "categories": len(load_vocabulary().category_names), "described": len(load_knowledge().to_arrow()),
                  "prompt": load_prompt(default_prompt_dir()).version, "configs": list_configs()}))
""")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("pipeline", "knowledge", "prompts"):
        assert Path(found[key]).is_relative_to(installed), (key, found[key])
    assert found["categories"] > 10 and found["described"] > 10 and found["prompt"]
    assert {"tiny", "demo", "paper"} <= set(found["configs"])


def test_the_installed_copy_runs_ingestion_and_extraction_from_another_folder(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    steps = """
import json, sys
from pathlib import Path
from pipeline.cli import main
from corpus.generate import generate_corpus
assert main(["init"]) == 0
generate_corpus(Path(".medfilip/corpus"), studies=6, seed=1, image_size=64, eval_images=0)
shard = sorted(p.name for p in Path(".medfilip/corpus/files").iterdir())[0]
for target in ("reports", "dicom_index"):
    assert main(["run", target, "--partition", shard, "--json"]) == 0, target
assert main(["run", "llm_extractions", "--json"]) == 0
assert main(["run", "knowledge_base", "--json"]) == 0
"""
    done = run_installed(installed, work, steps)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(block) for block in _json_blocks(done.stdout)]
    rows = {name: n for s in summaries for name, n in s["rows"].items()}
    assert rows["reports"] > 0 and rows["dicom_index"] > 0 and rows["llm_extractions"] > 0 and rows["knowledge_base"] > 10
    assert (work / ".medfilip" / "data" / "llm_extractions" / "llm_extractions.parquet").is_file()


def _json_blocks(text: str) -> list[str]:
    """The pretty-printed JSON summaries `medfilip run` prints, one per run."""
    blocks, current = [], []
    for line in text.splitlines():
        if line == "{":
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                blocks.append("\n".join(current))
                current = []
    return blocks
