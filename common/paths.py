"""Where the plain-file packages live: the knowledge base and the extraction prompts.

They are package data (`knowledge/`, `prompts/` ship in the wheel), located through the import
system rather than relative to this file, so a checkout, an editable install and a plain
install in any folder all find them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root; tests and deploy/ use it


def package_dir(name: str) -> Path:
    """The folder of a data package, or an error naming the broken installation."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the medfilip data package {name!r} is not installed: reinstall medfilip "
                                  f"(pip install .) so that {name}/ ships with it")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


KNOWLEDGE_DIR = package_dir("knowledge")
PROMPTS_DIR = package_dir("prompts")
