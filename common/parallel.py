"""An ordered map over a process pool with a bounded number of tasks in flight, so memory
stays flat whatever the number of items (the stdlib's Executor.map submits everything at once),
and crash-isolating: an item that kills its worker process (a C decoder's segfault or abort, the
OOM killer) costs that item, not the map."""
from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Items in a row that kill even a process of their own: then the environment (a memory limit, a
# broken library install) is at fault, not the files, and the map stops instead of starting a
# process per item.
CRASH_LIMIT = 5

# spawn: the caller may be a threaded process (Dagster, tqdm), where fork is unsafe.
_SPAWN = multiprocessing.get_context("spawn")


class WorkerCrashes(RuntimeError):
    """Worker processes died where no item is to blame, or no `on_crash` says what a crash yields."""


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int = 0,
                on_crash: Callable[[T, str], R] | None = None, isolate: bool = False,
                crash_limit: int = CRASH_LIMIT) -> Iterator[R]:
    """Yield fn(item) in input order using `workers` processes, so the outputs are the same
    whatever `workers` is. workers <= 1 runs inline, where a hard crash ends the caller, unless
    `isolate` asks for one worker process even so.

    When a worker dies, the pool is broken: the items it had not finished run again one at a time
    in a process of their own, where an item that kills that process too is identified, and yields
    `on_crash(item, why)` (why: e.g. "worker process died (exit code -11 / SIGSEGV)"); without
    `on_crash` that raises WorkerCrashes. A fresh pool then takes the remaining items. Each item runs
    at most twice, so the map always ends; `crash_limit` items in a row that crash alone raise."""
    if workers <= 1 and not isolate:
        yield from map(fn, items)
        return
    source = iter(items)
    limit = in_flight or max(1, workers) * 8
    with _LoneWorker(fn, on_crash, crash_limit) as alone:
        while True:
            unfinished = yield from _until_broken(fn, source, max(1, workers), limit)
            if not unfinished:
                return
            for item, future in unfinished:  # in input order, each after the ones before it
                if future is None or _broken(future):
                    yield alone.run(item)
                else:
                    yield future.result()


def _until_broken(fn: Callable[[T], R], source: Iterator[T], workers: int,
                  limit: int) -> Generator[R, None, list[tuple[T, Future | None]]]:
    """Yield results in order until the source is done (returns []) or the pool breaks (returns
    the (item, future) pairs not yet yielded; None: the item never reached the pool)."""
    pending: deque[tuple[T, Future]] = deque()
    with ProcessPoolExecutor(workers, mp_context=_SPAWN) as pool:
        for item in source:
            try:
                pending.append((item, pool.submit(fn, item)))
            except BrokenProcessPool:  # a worker died since the last look
                return [*pending, (item, None)]
            while len(pending) >= limit or (pending and pending[0][1].done()):
                if _broken(pending[0][1]):
                    return list(pending)
                yield pending.popleft()[1].result()
        while pending:
            if _broken(pending[0][1]):
                return list(pending)
            yield pending.popleft()[1].result()
    return []


def _broken(future: Future | None) -> bool:
    """Wait for the future; whether the pool broke under it (fn's own exceptions are results)."""
    return future is None or isinstance(future.exception(), BrokenProcessPool)


class _LoneWorker(Generic[T, R]):
    """One spawned process running items one at a time, so the item it dies on is the culprit;
    started on first use, started again after each death."""

    def __init__(self, fn: Callable[[T], R], on_crash: Callable[[T, str], R] | None, crash_limit: int) -> None:
        self.fn, self.on_crash, self.crash_limit = fn, on_crash, crash_limit
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.in_a_row = 0

    def __enter__(self) -> _LoneWorker[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.conn is not None:
            self.conn.send(None)
            self.conn.close()
            self.process.join()

    def run(self, item: T) -> R:
        if self.process is None:
            self.conn, child = _SPAWN.Pipe()
            self.process = _SPAWN.Process(target=_serve, args=(self.fn, child), daemon=True)
            self.process.start()
            child.close()  # the parent's copy: the child's death then reads as EOF here
        assert self.conn is not None
        self.conn.send((item,))
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            return self._died(item)
        self.in_a_row = 0
        if not ok:
            raise value
        return value

    def _died(self, item: T) -> R:
        assert self.process is not None and self.conn is not None
        self.process.join()
        why = describe_exit(self.process.exitcode)
        self.conn.close()
        self.process = self.conn = None
        self.in_a_row += 1
        if self.in_a_row >= self.crash_limit:
            raise WorkerCrashes(f"{why}, on {self.in_a_row} items in a row even one at a time: the environment "
                                "(a memory limit, a broken decoder install), not the items; fix it and run again")
        if self.on_crash is None:
            raise WorkerCrashes(f"{why} on one item run alone; the caller passed no on_crash to record it")
        return self.on_crash(item, why)


def _serve(fn: Callable, conn: Connection) -> None:
    """The lone worker's loop: (item,) in, (True, result) or (False, exception) out; None ends it."""
    while (message := conn.recv()) is not None:
        try:
            conn.send((True, fn(message[0])))
        except Exception as exc:
            try:
                conn.send((False, exc))
            except Exception:  # an exception that does not pickle still arrives, as its text
                conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def describe_exit(code: int | None) -> str:
    """'worker process died (exit code -11 / SIGSEGV)': a negative code is the signal's number."""
    if code is not None and code < 0:
        try:
            return f"worker process died (exit code {code} / {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"worker process died (exit code {code})"
