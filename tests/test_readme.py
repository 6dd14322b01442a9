"""The README's commands work (issue 16): every command in a code block marked `runnable` (the
fence reads ```bash runnable) runs against a small home in an empty folder, in the README's order.
Those that would train a model or start a server run as `--help` (medfilip) or `make -n` (make),
which still fails when the subcommand, option or target is gone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
# Kept out of a test run: a whole demo or training, a server that never exits, a model that does
# not exist yet in a fresh home. Their --help runs instead.
HELP_ONLY = {("medfilip", "demo"), ("medfilip", "ui"), ("medfilip", "lineage")}
# The README's sizes, shrunk for a test home.
SHRINK = [(re.compile(r"--studies \d+"), "--studies 24 --image-size 64")]


def runnable_commands(text: str) -> list[str]:
    """Commands of ```... runnable blocks: comments dropped, one command per line."""
    commands, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside and "runnable" in line.split()[1:]
            continue
        if inside:
            command = line.split("  #", 1)[0].split(" # ", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def as_run(command: str) -> tuple[str, bool]:
    """The command as the test runs it, and whether it runs for real."""
    words = shlex.split(command)
    program = next(w for w in words if "=" not in w or w.startswith("-"))
    if program == "make":
        return f"make -n -C {shlex.quote(str(REPO))} {shlex.join(words[1:])}", False
    if program.endswith("medfilip") and (("medfilip", words[words.index(program) + 1]) in HELP_ONLY):
        return f"medfilip {words[words.index(program) + 1]} --help", False
    for pattern, replacement in SHRINK:
        command = pattern.sub(replacement, command)
    return command.replace(".venv/bin/", f"{BIN}/"), True


def test_the_readme_has_runnable_blocks_with_the_everyday_commands():
    commands = runnable_commands(README.read_text())
    assert any(c.startswith("medfilip init") for c in commands)
    assert any("dagster asset materialize" in c for c in commands)
    assert len(commands) >= 10


def test_every_runnable_readme_command_works(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDFILIP_") and k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MEDFILIP_PATIENT_SALT="readme")
    work = tmp_path / "work"
    work.mkdir()
    failures = []
    ran = 0
    for command in runnable_commands(README.read_text()):
        shell, real = as_run(command)
        done = subprocess.run(["bash", "-c", shell], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        ran += real
        if done.returncode != 0:
            failures.append(f"{command!r} (ran {shell!r}) exited {done.returncode}: {done.stderr.strip()[-600:]}")
    assert not failures, "\n".join(failures)
    assert ran >= 7
    # What those commands left behind is what the README says they make.
    assert (work / "medfilip.yaml").is_file() and (work / ".medfilip" / "dagster" / "dagster.yaml").is_file()
    assert (work / ".medfilip" / "data" / "dicom_index" / "p10.parquet").is_file()
    assert (work / ".medfilip" / "data" / "triplets" / "triplets.parquet").is_file()


@pytest.mark.parametrize("block, expected", [
    ("```bash runnable\nmedfilip run x   # note\n# only a comment\n```\n```bash\nnot me\n```", ["medfilip run x"]),
    ("```yaml\nhome: x\n```", []),
])
def test_only_commands_of_runnable_blocks_are_taken(block, expected):
    assert runnable_commands(block) == expected
