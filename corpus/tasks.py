"""Run independent per-item tasks in order, in this process or a process pool.

Results come back in input order whatever `workers` is, so outputs are byte-identical.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def run_tasks(fn: Callable[[T], R], items: Sequence[T], workers: int = 1, progress: bool = False,
              desc: str = "") -> list[R]:
    if workers <= 1 or len(items) < 2:
        results: Iterable[R] = map(fn, items)
        return list(tqdm(results, total=len(items), desc=desc, disable=not progress))
    chunk = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, items, chunksize=chunk)
        return list(tqdm(results, total=len(items), desc=desc, disable=not progress))
