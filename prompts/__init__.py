"""The extraction prompts as package data: one folder per prompt (system.md + user.md), found
through importlib.resources so an installed copy (wheel, --target) has them too."""
