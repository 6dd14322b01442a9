"""Leaf helpers shared by every package: atomic writes, digests, an ordered process-pool map,
markdown tables and where the repository's plain files live. Imports nothing of ours."""
