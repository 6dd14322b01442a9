"""An ordered map over a process pool with a bounded number of tasks in flight, so memory
stays flat whatever the number of items (the stdlib's Executor.map submits everything at once)."""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int = 0) -> Iterator[R]:
    """Yield fn(item) in input order using `workers` processes (inline when workers <= 1), so the
    outputs are the same whatever `workers` is."""
    if workers <= 1:
        yield from map(fn, items)
        return
    limit = in_flight or workers * 8
    # spawn: the caller may be a threaded process (Dagster, tqdm), where fork is unsafe.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
