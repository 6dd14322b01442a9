"""Where the repository's plain files live: the knowledge base and the extraction prompts."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE_DIR = REPO_ROOT / "knowledge"
PROMPTS_DIR = REPO_ROOT / "prompts"
